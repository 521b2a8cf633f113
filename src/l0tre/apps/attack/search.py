"""Batched search moves of the minimal-L0 attack.

All moves work on a *shard* of ``A`` inputs at once and keep, per input, the current example
``x`` ``(A, C, H, W)``, whether it is adversarial (``found``) and its margin (``score``, the
:class:`~l0tre.engine.objective.Misclassification` margin ``s_j − max_{k≠j} s_k``; negative
when adversarial). A *candidate row* is one edited copy of an example; rows are built chunk by
chunk (``batch_size`` rows per model call) and reduced per input with a total order (lowest
score, then lowest row), so results do not depend on the batch size.

Moves (every accepted move keeps the example adversarial, or makes it so):

* :meth:`Searcher.screen` — single-feature sensitivities (the engine's level ``t = 1`` pass,
  :func:`~l0tre.engine.sensitivity.evaluate_unit`), over all features × the ε-grid
  (``exact``) or over the ``candidates`` (feature, colour) pairs ranked best by a first-order
  (gradient) estimate of the margin change (``gradient``).
* :meth:`Searcher.orderings` — the paper's upper-bound path: apply the single-feature
  solutions cumulatively in sensitivity order (by confidence, and by margin) with
  :func:`~l0tre.engine.upper.accumulate`.
* :meth:`Searcher.greedy` — adaptive forward selection: at every step evaluate candidate
  additions exactly and keep the one with the lowest margin.
* :meth:`Searcher.tighten` — the engine's greedy single reverts.
* :meth:`Searcher.reduce` — remove two changed features, add one new (L0 − 1).
* :meth:`Searcher.swap` — replace one changed feature by another when that lowers the margin.
* :meth:`Searcher.recolour` — give a changed feature another value (finer grid) when that
  lowers the margin.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ...classifier import Classifier
from ...engine.features import FeatureSpace
from ...engine.sensitivity import LevelContext, UnitResult, evaluate_unit
from ...engine.subspaces import binomial_table
from ...engine.tighten import tighten as engine_tighten
from ...engine.upper import accumulate
from ...execution.precision import Rechecked
from ...objectives import Misclassification, ObjectiveValues

__all__ = ["SearchConfig", "CountingObjective", "Searcher"]

_BIG = torch.iinfo(torch.int64).max
_INF = float("inf")


@dataclass(frozen=True)
class SearchConfig:
    """Search settings (validated by :func:`l0tre.attack`).

    Attributes:
        screen: ``"exact"`` (all features × the ε-grid, the paper's t = 1 pass) or
            ``"gradient"`` (the ``candidates`` pairs ranked best by a first-order estimate).
        candidates: (feature, colour) pairs screened exactly in ``gradient`` mode.
        per_step: gradient-ranked additions tried per greedy step / per edited row.
        pool: additions taken from the screening ranking per greedy step / per edited row.
        rounds: refinement rounds (reduce → swap → recolour → tighten).
        reduce_limit: largest L0 for which :meth:`Searcher.reduce` is tried.
        reduce_pairs: pairs of changed features tried per input by :meth:`Searcher.reduce`
            (those whose single reverts raise the margin least).
        moves_per_row: additions tried per edited row in ``reduce`` and ``swap``.
        colours_per_feature: colours per feature in a gradient ranking (the best few by the
            estimate), so that the ranking covers more features.
        starts: greedy runs per input, started from the best ``starts`` screened features.
        max_steps: greedy steps at most (an example longer than this is not searched for).
        orderings: also run the paper's cumulative orderings (:meth:`Searcher.orderings`).
        ordering_slack: in gradient mode an ordering's example is tightened only when it is
            at most this many features longer than the greedy one (exact mode: always).
    """

    screen: str = "gradient"
    candidates: int = 128
    per_step: int = 16
    pool: int = 8
    rounds: int = 2
    reduce_limit: int = 64
    reduce_pairs: int = 8
    moves_per_row: int = 8
    max_steps: int = 1 << 30
    starts: int = 1
    colours_per_feature: int = 2
    orderings: bool = True
    ordering_slack: int = 4


class CountingObjective(Misclassification):
    """:class:`Misclassification` that counts the model rows it evaluates (``rows``)."""

    def __init__(self) -> None:
        self.rows = 0

    def evaluate(self, model: Classifier, x: torch.Tensor, ref: torch.Tensor) -> ObjectiveValues:
        self.rows += int(x.shape[0])
        return super().evaluate(model, x, ref)


class Deadline:
    """A wall-clock deadline (``None``: none)."""

    def __init__(self, seconds: float | None) -> None:
        self.at = None if seconds is None else time.perf_counter() + seconds
        self.hit = False

    def passed(self) -> bool:
        if self.at is not None and time.perf_counter() >= self.at:
            self.hit = True
        return self.hit


def pick(owner: torch.Tensor, score: torch.Tensor, ok: torch.Tensor, na: int) -> torch.Tensor:
    """Per owner, the row with the lowest score among ``ok`` rows (ties: lowest row).

    Args:
        owner: ``(R,)`` owner index in ``[0, na)``; score: ``(R,)``; ok: ``(R,)`` bool.

    Returns:
        LongTensor ``(na,)``: the chosen row, ``-1`` where an owner has no ``ok`` row.
    """
    dev = score.device
    ok = ok & ~torch.isnan(score)
    key = torch.where(ok, score, torch.full_like(score, _INF))
    best = torch.full((na,), _INF, dtype=score.dtype, device=dev).scatter_reduce(0, owner, key, "amin")
    hit = ok & (key == best[owner])
    rows = torch.arange(score.shape[0], device=dev)
    br = torch.full((na,), _BIG, dtype=torch.int64, device=dev).scatter_reduce(0, owner[hit], rows[hit], "amin")
    return torch.where(br < _BIG, br, torch.full_like(br, -1))


class Searcher:
    """Search state and moves for one shard of ``A`` inputs.

    Args:
        model: the classifier; space: the feature space.
        x0: ``(A, C, H, W)`` originals (model device and dtype); ref: ``(A,)`` labels ``j``.
        palette: ``(P, Cf)`` the ε-grid colours; fine: ``(Q, Cf)`` colours for :meth:`recolour`.
        objective: a counting objective; batch_size: rows per model call.
        differentiable: gradients of the model are available.
        config: search settings; deadline: the time budget.
    """

    def __init__(
        self,
        model: Classifier,
        space: FeatureSpace,
        x0: torch.Tensor,
        ref: torch.Tensor,
        palette: torch.Tensor,
        fine: torch.Tensor,
        objective: CountingObjective | Rechecked,
        *,
        batch_size: int,
        grad_rows: int,
        differentiable: bool,
        config: SearchConfig,
        deadline: Deadline,
    ) -> None:
        self.model, self.space, self.x0, self.ref = model, space, x0, ref
        self.palette, self.fine, self.objective = palette, fine, objective
        self.batch_size, self.grad_rows = batch_size, grad_rows
        self.differentiable, self.cfg, self.deadline = differentiable, config, deadline
        self.na = x0.shape[0]
        self.dev = x0.device
        self.orig = space.values(x0)  # (A, n, Cf)
        self.gradients = 0
        # screening ranking (filled by screen): (A, K) feature / colour index / present
        self.pool_feat = torch.zeros(self.na, 0, dtype=torch.int64, device=self.dev)
        self.pool_col = torch.zeros_like(self.pool_feat)
        self.pool_ok = torch.zeros(self.na, 0, dtype=torch.bool, device=self.dev)
        self.pool_score = torch.zeros(self.na, 0, dtype=torch.float64, device=self.dev)

    # -- model access -------------------------------------------------------------------------
    def evaluate_edits(
        self,
        base: torch.Tensor,
        owner: torch.Tensor,
        feat: torch.Tensor,
        val: torch.Tensor,
        index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Evaluate rows of ``base`` with features set (rows are built chunk by chunk).

        Args:
            base: ``(B, C, H, W)`` examples.
            owner: ``(R,)`` input index of each row.
            feat: ``(R, m)`` features to set; val: ``(R, m, Cf)`` their values.
            index: ``(R,)`` row of ``base`` each edited row starts from (``None``: row ``r``
                starts from ``base[r]``, ``B = R``).

        Returns:
            score ``(R,)`` (float64), success ``(R,)`` bool, label ``(R,)``.
        """
        scores, succ, labels = [], [], []
        r_count = owner.shape[0]
        for b0 in range(0, r_count, self.batch_size):
            sl = slice(b0, b0 + self.batch_size)
            xb = base[sl].clone() if index is None else base[index[sl]]
            if feat.shape[1]:
                self.space.scatter(xb, feat[sl], val[sl])
            ov = self.objective.evaluate(self.model, xb, self.ref[owner[sl]])
            scores.append(ov.score.to(self.dev, torch.float64))
            succ.append(ov.success.to(self.dev))
            labels.append(ov.label.to(self.dev))
        if not scores:
            empty = torch.zeros(0, device=self.dev)
            return empty.double(), empty.bool(), empty.long()
        return torch.cat(scores), torch.cat(succ), torch.cat(labels)

    def margin_grad(self, x: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """Gradient of the margin w.r.t. the pixel-space input, ``(R, C, H, W)``."""
        module = self.model.modules()
        if module is None:
            raise RuntimeError("margin_grad: the model is not a torch.nn.Module")
        pre = self.model.preprocessing
        # detached parameters: autograd then skips the weight gradients (not for TorchScript)
        scripted = isinstance(module, torch.jit.ScriptModule)
        frozen = {} if scripted else {k: v.detach() for k, v in module.state_dict(keep_vars=True).items()}
        grads = []
        for b0 in range(0, x.shape[0], self.grad_rows):
            xb = x[b0 : b0 + self.grad_rows].detach().clone().requires_grad_(True)
            ref = self.ref[owner[b0 : b0 + self.grad_rows]].view(-1, 1)
            with torch.enable_grad():
                z = xb
                if pre is not None:
                    mean = torch.tensor(pre.mean, dtype=xb.dtype, device=xb.device).view(1, -1, 1, 1)
                    std = torch.tensor(pre.std, dtype=xb.dtype, device=xb.device).view(1, -1, 1, 1)
                    z = (z - mean) / std
                raw = module(z) if scripted else torch.func.functional_call(module, frozen, (z,))
                s = self.model.as_scores(raw)
                s_j = s.gather(1, ref).squeeze(1)
                others = s.scatter(1, ref, float("-inf")).max(dim=1).values
                (g,) = torch.autograd.grad((s_j - others).sum(), xb)
            grads.append(g.detach())
            self.gradients += int(xb.shape[0])
        return torch.cat(grads) if grads else torch.zeros_like(x)

    # -- candidate additions ------------------------------------------------------------------
    def additions(
        self, x: torch.Tensor, owner: torch.Tensor, m_grad: int, m_pool: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidate single-feature additions for each row of ``x``.

        Up to ``m_grad`` (feature, colour) pairs ranked by the first-order estimate
        ``∇margin · (colour − value)`` at ``x`` (when gradients are available) and up to
        ``m_pool`` pairs from the screening ranking; features already changed in a row are
        excluded, duplicates removed.

        Args:
            x: ``(R, C, H, W)`` rows; owner: ``(R,)`` their input indices.

        Returns:
            ``row`` ``(E,)`` (index into ``x``), ``feat`` ``(E,)``, ``colour`` ``(E,)`` (palette
            index), ordered by row then feature then colour.
        """
        r_count = x.shape[0]
        p = self.palette.shape[0]
        n = self.space.n
        keys: list[torch.Tensor] = []
        oks: list[torch.Tensor] = []
        changed = self.space.changed(x, self.x0[owner])  # (R, n)
        if m_grad > 0 and self.differentiable and r_count:
            g = self.margin_grad(x, owner)
            parts_k, parts_o = [], []
            step = max(1, (1 << 22) // max(1, n * p * self.space.channels))
            for b0 in range(0, r_count, step):
                sl = slice(b0, b0 + step)
                gv = self.space.values(g[sl]).to(torch.float64)
                xv = self.space.values(x[sl]).to(torch.float64)
                pal = self.palette.to(torch.float64)
                est = torch.einsum("rnc,pc->rnp", gv, pal) - (gv * xv).sum(2, keepdim=True)
                same = (self.orig[owner[sl]].unsqueeze(2) == self.palette.view(1, 1, p, -1)).all(3)
                bad = same | changed[sl].unsqueeze(2)
                est = torch.where(bad, torch.full_like(est, _INF), est)
                if self.cfg.colours_per_feature < p:
                    # keep each feature's best few colours so that the ranking covers more features
                    c = self.cfg.colours_per_feature
                    kth = torch.sort(est, dim=2).values[:, :, c - 1 : c]
                    est = torch.where(est <= kth, est, torch.full_like(est, _INF))
                est = est.reshape(est.shape[0], n * p)
                order = torch.argsort(est, dim=1, stable=True)[:, : min(m_grad, n * p)]
                parts_k.append(order)
                parts_o.append(est.gather(1, order) < _INF)
            keys.append(torch.cat(parts_k))
            oks.append(torch.cat(parts_o))
        if m_pool > 0 and self.pool_feat.shape[1]:
            pf, pc, po = self.pool_feat[owner], self.pool_col[owner], self.pool_ok[owner]
            free = po & ~changed.gather(1, pf)
            # the first m_pool free entries of the ranking
            rank = torch.cumsum(free.to(torch.int64), dim=1)
            take = free & (rank <= m_pool)
            keys.append(pf * p + pc)
            oks.append(take)
        if not keys:
            e = torch.zeros(0, dtype=torch.int64, device=self.dev)
            return e, e.clone(), e.clone()
        key = torch.cat(keys, 1)
        ok = torch.cat(oks, 1)
        key = torch.where(ok, key, torch.full_like(key, _BIG))
        key = torch.sort(key, dim=1).values
        dup = torch.zeros_like(ok)
        dup[:, 1:] = key[:, 1:] == key[:, :-1]
        keep = (key < _BIG) & ~dup
        rows, cols = keep.nonzero(as_tuple=True)
        k = key[rows, cols]
        return rows, k // p, k % p

    def try_additions(
        self, x: torch.Tensor, owner: torch.Tensor, m_grad: int, m_pool: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Evaluate the candidate additions of every row of ``x``.

        Returns:
            ``row``, ``feat``, ``colour`` ``(E,)`` as :meth:`additions`, and ``score``,
            ``success`` ``(E,)`` of each edited row.
        """
        row, feat, col = self.additions(x, owner, m_grad, m_pool)
        score, succ, _ = self.evaluate_edits(
            x, owner[row], feat.unsqueeze(1), self.palette[col].unsqueeze(1), index=row
        )
        return row, feat, col, score, succ

    # -- stages -------------------------------------------------------------------------------
    def screen(self) -> UnitResult:
        """Single-feature sensitivities (the engine's t = 1 pass); fills the pool ranking.

        Returns:
            the :class:`UnitResult` (CPU): per input all screened features sorted by
            (confidence, margin, feature), their argmin colour and the best single-feature
            adversarial example (``w_rank``/``w_point``, ``-1`` where none).
        """
        n, p = self.space.n, self.palette.shape[0]
        valid = (self.orig.unsqueeze(2) != self.palette.view(1, 1, p, -1)).any(3)  # (A, n, P)
        if self.cfg.screen == "gradient" and self.cfg.candidates < n * p:
            owner = torch.arange(self.na, device=self.dev)
            row, feat, col = self.additions(self.x0, owner, self.cfg.candidates, 0)
            sel = torch.zeros_like(valid)
            sel[row, feat, col] = True
            valid = valid & sel
        ctx = LevelContext.build(self.space, self.palette, 1, binomial_table(n, 1))
        unit = evaluate_unit(
            self.model, self.objective, self.x0, self.ref, valid, torch.arange(self.na), ctx, 0, n,
            batch_size=self.batch_size, k=n,
        )
        present = unit.rank >= 0
        # pool ranking: by margin, then feature
        score = torch.where(present, unit.score, torch.full_like(unit.score, _INF))
        order = torch.argsort(torch.where(present, unit.rank, torch.full_like(unit.rank, _BIG)), dim=1, stable=True)
        order = order.gather(1, torch.argsort(score.gather(1, order), dim=1, stable=True))
        self.pool_feat = unit.rank.gather(1, order).clamp_min(0).to(self.dev)
        self.pool_col = unit.point.gather(1, order).clamp_min(0).to(self.dev)
        self.pool_ok = present.gather(1, order).to(self.dev)
        self.pool_score = score.gather(1, order).to(self.dev)
        return unit

    def witness(self, unit: UnitResult) -> tuple[torch.Tensor, torch.Tensor]:
        """Single-feature adversarial examples of the screening: ``found`` ``(A,)``, ``x``."""
        has = (unit.w_rank >= 0).to(self.dev)
        x = self.x0.clone()
        if bool(has.any()):
            h = has.nonzero().squeeze(1)
            xh = x[h]
            self.space.scatter(xh, unit.w_rank.to(self.dev)[h].unsqueeze(1),
                               self.palette[unit.w_point.to(self.dev)[h]].unsqueeze(1))
            x[h] = xh
        return has, x

    def orderings(self, unit: UnitResult, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The paper's cumulative path, ordered by confidence and by margin.

        Args:
            unit: the screening result; rows: ``(B,)`` inputs to run.

        Returns:
            ``owner`` ``(2B,)``, ``found`` ``(2B,)``, ``x`` ``(2B, C, H, W)`` (untightened).
        """
        b = rows.shape[0]
        rc = rows.cpu()
        feats_conf = unit.rank[rc].clamp_min(0)
        present_conf = unit.rank[rc] >= 0
        vals_conf = self.palette[unit.point[rc].clamp_min(0).to(self.dev)]
        feats = torch.cat([feats_conf.to(self.dev), self.pool_feat[rows]]).unsqueeze(2)
        vals = torch.cat([vals_conf, self.palette[self.pool_col[rows]]]).unsqueeze(2)
        present = torch.cat([present_conf.to(self.dev), self.pool_ok[rows]])
        owner = torch.cat([rows, rows])
        found, x, _ = accumulate(
            self.model, self.objective, self.space, self.x0[owner], self.ref[owner], feats, vals, present,
            batch_size=max(1, min(self.batch_size, 16 * 2 * b)),
        )
        return owner, found, x

    def greedy(self, rows: torch.Tensor, start: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Adaptive forward selection, started from a screened single feature.

        Args:
            rows: ``(B,)`` inputs (repeats allowed); start: ``(B,)`` rank in the screening
                ranking of the first feature (``-1``: start from the original);
            cap: most features to change.

        Returns:
            ``found`` ``(B,)`` and the examples ``(B, C, H, W)``.
        """
        b = rows.shape[0]
        x = self.x0[rows].clone()
        found = torch.zeros(b, dtype=torch.bool, device=self.dev)
        active = torch.ones(b, dtype=torch.bool, device=self.dev)
        if self.pool_feat.shape[1]:
            st = start.clamp(0, self.pool_feat.shape[1] - 1)
            first = (start >= 0) & self.pool_ok[rows, st]
            idx = first.nonzero().squeeze(1)
            xi = x[idx]
            f0 = self.pool_feat[rows[idx], st[idx]].unsqueeze(1)
            self.space.scatter(xi, f0, self.palette[self.pool_col[rows[idx], st[idx]]].unsqueeze(1))
            x[idx] = xi
            active &= first | (start < 0)
        steps = 1
        while bool(active.any()) and steps < min(cap, self.cfg.max_steps) and not self.deadline.passed():
            a = active.nonzero().squeeze(1)
            row, feat, col, score, succ = self.try_additions(x[a], rows[a], self.cfg.per_step, self.cfg.pool)
            if row.numel() == 0:
                active[a] = False
                break
            win = pick(row, score, succ, a.shape[0])
            best = pick(row, score, torch.isfinite(score), a.shape[0])
            choice = torch.where(win >= 0, win, best)
            has = choice >= 0
            sel = choice[has]
            ai = a[has]
            xi = x[ai]
            self.space.scatter(xi, feat[sel].unsqueeze(1), self.palette[col[sel]].unsqueeze(1))
            x[ai] = xi
            done = win >= 0
            found[a[done]] = True
            active[a[done | ~has]] = False
            steps += 1
        return found, x

    def tighten(self, owner: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The engine's greedy single reverts of adversarial rows ``x`` ``(R, C, H, W)``."""
        if x.shape[0] == 0:
            return x
        xt, _ = engine_tighten(self.model, self.objective, self.space, self.x0[owner], self.ref[owner], x,
                               batch_size=self.batch_size)
        return xt

    def margins_of(self, rows: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score and success ``(B,)`` of examples ``x`` ``(B, C, H, W)`` of inputs ``rows``."""
        b = x.shape[0]
        score, succ, _ = self.evaluate_edits(
            x, rows, torch.zeros(b, 0, dtype=torch.int64, device=self.dev),
            torch.zeros(b, 0, self.space.channels, dtype=x.dtype, device=self.dev),
        )
        return score, succ

    def _removed(self, x: torch.Tensor, rows: torch.Tensor, k_of: int) -> tuple[torch.Tensor, ...]:
        """Rows of ``x`` (inputs ``rows``) with ``k_of`` changed features reverted (1 or 2).

        For ``k_of = 2`` only the ``reduce_pairs`` pairs whose members matter least (lowest
        sum of single-revert margins, evaluated here) are kept per input.

        Returns:
            ``src`` (R',) position in ``rows``, ``xr`` (R', C, H, W), the reverted features (R', k_of).
        """
        changed = self.space.changed(x, self.x0[rows])
        src1, f1 = changed.nonzero(as_tuple=True)
        if k_of == 2 and src1.numel():
            xr1 = x[src1].clone()
            self.space.scatter(xr1, f1.unsqueeze(1), self.orig[rows[src1], f1].unsqueeze(1))
            single, _ = self.margins_of(rows[src1], xr1)
        feats_list, src_list = [], []
        for i in range(rows.shape[0]):
            sel = src1 == i
            f = f1[sel]
            if k_of == 1:
                combos = f.unsqueeze(1)
            else:
                if f.numel() < 2 or f.numel() > self.cfg.reduce_limit:
                    continue
                pos = torch.combinations(torch.arange(f.numel(), device=self.dev), 2)
                m = single[sel]
                prio = m[pos[:, 0]] + m[pos[:, 1]]
                order = torch.argsort(prio, stable=True)[: self.cfg.reduce_pairs]
                combos = f[pos[order]]
            feats_list.append(combos)
            src_list.append(torch.full((combos.shape[0],), i, dtype=torch.int64, device=self.dev))
        if not feats_list:
            e = torch.zeros(0, dtype=torch.int64, device=self.dev)
            return e, x[:0], e.view(0, k_of)
        feats = torch.cat(feats_list)
        src = torch.cat(src_list)
        xr = x[src].clone()
        self.space.scatter(xr, feats, self.orig[rows[src].unsqueeze(1), feats])
        return src, xr, feats

    def _edit_moves(
        self, x: torch.Tensor, rows: torch.Tensor, k_of: int, bar: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Revert ``k_of`` features and add one; keep per input the lowest-margin adversarial
        edit whose margin is below ``bar`` ``(B,)``.

        Returns:
            ``improved`` ``(B,)``, new ``x`` ``(B, C, H, W)`` and new ``score`` ``(B,)``.
        """
        b = rows.shape[0]
        src, xr, _ = self._removed(x, rows, k_of)
        improved = torch.zeros(b, dtype=torch.bool, device=self.dev)
        if src.numel() == 0:
            return improved, x, bar
        m = self.cfg.moves_per_row
        row, feat, col, score, succ = self.try_additions(xr, rows[src], m, m // 2)
        owner = src[row]
        win = pick(owner, score, succ & (score < bar[owner]), b)
        has = win >= 0
        if not bool(has.any()):
            return improved, x, bar
        w = win[has]
        x_new = x.clone()
        xi = xr[row[w]].clone()
        self.space.scatter(xi, feat[w].unsqueeze(1), self.palette[col[w]].unsqueeze(1))
        x_new[has] = xi
        new_bar = bar.clone()
        new_bar[has] = score[w]
        improved[has] = True
        return improved, x_new, new_bar

    def reduce(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Remove two changed features and add one (L0 − 1) where that stays adversarial.

        Returns:
            ``improved`` ``(B,)`` and the examples ``(B, C, H, W)``.
        """
        bar = torch.full((rows.shape[0],), _INF, dtype=torch.float64, device=self.dev)
        improved, x_new, _ = self._edit_moves(x, rows, 2, bar)
        return improved, x_new

    def swap(self, x: torch.Tensor, rows: torch.Tensor, score: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Replace one changed feature by a new one where the margin drops below ``score``.

        Returns:
            ``improved`` ``(B,)``, examples ``(B, C, H, W)``, scores ``(B,)``.
        """
        return self._edit_moves(x, rows, 1, score)

    def recolour(self, x: torch.Tensor, rows: torch.Tensor, score: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Give one changed feature another value of the fine grid where that lowers the margin.

        Returns:
            ``improved`` ``(B,)``, examples ``(B, C, H, W)``, scores ``(B,)``.
        """
        b = rows.shape[0]
        q = self.fine.shape[0]
        changed = self.space.changed(x, self.x0[rows])
        src, feat = changed.nonzero(as_tuple=True)
        improved = torch.zeros(b, dtype=torch.bool, device=self.dev)
        if src.numel() == 0:
            return improved, x, score
        cur = self.space.values(x)[src, feat]  # (M, Cf)
        orig = self.orig[rows[src], feat]
        fine = self.fine.view(1, q, -1)
        ok = (fine != cur.unsqueeze(1)).any(2) & (fine != orig.unsqueeze(1)).any(2)  # (M, Q)
        mi, qi = ok.nonzero(as_tuple=True)
        es, esucc, _ = self.evaluate_edits(x, rows[src[mi]], feat[mi].unsqueeze(1),
                                           self.fine[qi].unsqueeze(1), index=src[mi])
        owner = src[mi]
        win = pick(owner, es, esucc & (es < score[owner]), b)
        has = win >= 0
        if not bool(has.any()):
            return improved, x, score
        w = win[has]
        x_new = x.clone()
        xi = x_new[has]
        self.space.scatter(xi, feat[mi[w]].unsqueeze(1), self.fine[qi[w]].unsqueeze(1))
        x_new[has] = xi
        new_score = score.clone()
        new_score[has] = es[w]
        improved[has] = True
        return improved, x_new, new_score
