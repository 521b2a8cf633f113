"""Subspace sensitivity: evaluate every grid point of a range of t-subsets, batched.

A *work unit* is ``(inputs, t, [r0, r1))``: the inputs (global indices), the level and a
range of colex subset ranks. Its result (:class:`UnitResult`) holds, per input, the top-K
subsets by sensitivity and the best adversarial grid point found (the *witness*). Unit
results merge by a total order (min / top-K), so units can run in any order or on different
machines and still give the same answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..classifier import Classifier
from ..execution.incremental import IncrementalCaches, IncrementalPrefix
from ..execution.pairs import PairTable
from ..objectives import Objective, from_outputs_capability
from .chain_rows import chain_raw, chain_values, checked_values, screening
from .level import LevelContext
from .subspaces import unrank

__all__ = ["LevelContext", "UnitResult", "chain_values", "evaluate_unit", "merge_units", "empty_unit", "sort_topk"]

_BIG = torch.iinfo(torch.int64).max


@dataclass
class UnitResult:
    """Mergeable partial result of a level for a set of inputs (all tensors on CPU).

    Attributes:
        inputs: ``(Na,)`` global input indices.
        conf: ``(Na, K)`` minimum confidence (``log c_j``) of the top-K subsets (``inf`` = empty).
        score: ``(Na, K)`` minimum score (margin) of those subsets.
        rank: ``(Na, K)`` colex rank of those subsets (``-1`` = empty slot).
        point: ``(Na, K)`` argmin point index (the subset's solution).
        w_score, w_rank, w_point: ``(Na,)`` best adversarial grid point (``w_rank = -1``: none).
        evaluations: ``(Na,)`` model evaluations spent per input.
    """

    inputs: torch.Tensor
    conf: torch.Tensor
    score: torch.Tensor
    rank: torch.Tensor
    point: torch.Tensor
    w_score: torch.Tensor
    w_rank: torch.Tensor
    w_point: torch.Tensor
    evaluations: torch.Tensor


def empty_unit(inputs: torch.Tensor, k: int, dtype: torch.dtype = torch.float32) -> UnitResult:
    na = inputs.shape[0]
    inf = torch.full((na, k), float("inf"), dtype=dtype)
    neg = torch.full((na, k), -1, dtype=torch.int64)
    return UnitResult(
        inputs=inputs.clone(), conf=inf, score=inf.clone(), rank=neg, point=neg.clone(),
        w_score=torch.full((na,), float("inf"), dtype=dtype),
        w_rank=torch.full((na,), -1, dtype=torch.int64),
        w_point=torch.full((na,), -1, dtype=torch.int64),
        evaluations=torch.zeros(na, dtype=torch.int64),
    )


def sort_topk(
    conf: torch.Tensor, score: torch.Tensor, rank: torch.Tensor, point: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort rows by (conf ↑, score ↑, rank ↑, empty last) and keep the first ``k`` columns."""
    r = torch.where(rank < 0, torch.full_like(rank, _BIG), rank)
    order = torch.argsort(r, dim=1, stable=True)
    for key in (score, conf):
        keyed = key.gather(1, order)
        order = order.gather(1, torch.argsort(keyed, dim=1, stable=True))
    order = order[:, :k]
    return conf.gather(1, order), score.gather(1, order), rank.gather(1, order), point.gather(1, order)


def _better(s1: torch.Tensor, r1: torch.Tensor, p1: torch.Tensor,
            s2: torch.Tensor, r2: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Lexicographic (score, rank, point) comparison where rank ``-1`` means "none"."""
    none1, none2 = r1 < 0, r2 < 0
    lex = (s1 < s2) | ((s1 == s2) & ((r1 < r2) | ((r1 == r2) & (p1 < p2))))
    return ~none1 & (none2 | lex)


def merge_units(a: UnitResult, b: UnitResult, k: int) -> UnitResult:
    """Merge two results over the same inputs (order-independent)."""
    if not torch.equal(a.inputs, b.inputs):
        raise ValueError("merge_units: unit results cover different inputs")
    conf, score, rank, point = sort_topk(
        torch.cat([a.conf, b.conf], 1), torch.cat([a.score, b.score], 1),
        torch.cat([a.rank, b.rank], 1), torch.cat([a.point, b.point], 1), k,
    )
    take_b = _better(b.w_score, b.w_rank, b.w_point, a.w_score, a.w_rank, a.w_point)
    return UnitResult(
        inputs=a.inputs, conf=conf, score=score, rank=rank, point=point,
        w_score=torch.where(take_b, b.w_score, a.w_score),
        w_rank=torch.where(take_b, b.w_rank, a.w_rank),
        w_point=torch.where(take_b, b.w_point, a.w_point),
        evaluations=a.evaluations + b.evaluations,
    )


def candidate_points(valid: torch.Tensor, subsets: torch.Tensor, ctx: LevelContext) -> torch.Tensor:
    """Valid (input, subset, point) triples, row-major.

    Args:
        valid: ``(Na, n, P1)`` valid colours per input and feature.
        subsets: ``(S, t)`` feature indices.

    Returns:
        LongTensor ``(M, 3)``: a point is valid iff every member takes a colour differing from
        its original value (points equal to the original on some member belong to a lower level).
    """
    v = valid[:, subsets.to(valid.device), :]  # (Na, S, t, P1)
    ok = v[:, :, 0, :][:, :, ctx.digits[:, 0]]
    for j in range(1, ctx.t):
        ok = ok & v[:, :, j, :][:, :, ctx.digits[:, j]]
    return ok.nonzero()


def evaluate_unit(
    model: Classifier,
    objective: Objective,
    x0: torch.Tensor,
    ref: torch.Tensor,
    valid: torch.Tensor,
    inputs: torch.Tensor,
    ctx: LevelContext,
    r0: int,
    r1: int,
    *,
    batch_size: int,
    k: int,
    on_batch: Callable[[int], None] | None = None,
    incremental: IncrementalPrefix | None = None,
    pairs: Sequence[PairTable] = (),
) -> UnitResult:
    """Evaluate all grid points of subsets with ranks ``[r0, r1)`` for the given inputs.

    Args:
        x0: ``(Na, C, H, W)`` original inputs (model device).
        ref: ``(Na,)`` references (labels).
        valid: ``(Na, n, P1)`` valid colour mask.
        inputs: ``(Na,)`` global indices (stored in the result).
        batch_size: model batch size (rows per model call).
        k: how many subsets to keep per input.
        on_batch: called with the number of evaluations after every model call.
        incremental: compute outputs through :class:`IncrementalPrefix` (rows whose margin is
            within ``BOUNDARY_TOL`` of zero are re-evaluated with the plain forward pass).
        pairs: at ``t = 2`` with ``incremental``, tables (:mod:`.pairs`) for ``x0``, deepest first:
            a row whose two pixels never meet before a table's convolution is computed from the
            first such table, the others through the chain.

    Returns:
        the unit's result, ``k`` columns; a unit without any valid grid point is
        :func:`empty_unit` (no subset, no witness, no evaluation).
    """
    dev = x0.device
    subsets = unrank(torch.arange(r0, r1), ctx.space.n, ctx.t, ctx.table).to(dev)
    cand = candidate_points(valid, subsets, ctx)
    dtype = torch.float32 if x0.dtype in (torch.float16, torch.bfloat16) else x0.dtype
    if cand.shape[0] == 0:  # no subset of the unit has a valid colour (e.g. a one-colour palette)
        return empty_unit(inputs.cpu(), k, dtype)
    best = _UnitBest.start(x0.shape[0], subsets.shape[0], dtype, dev)
    fast = from_outputs_capability(objective)
    raw_all = None
    screen = screening(model, objective, incremental, pairs, ctx, x0, ref, subsets)
    if screen is not None:  # low-precision rows; the close ones through the float32 chain
        raw_all = _unit_raw(screen.low, screen.low.base(x0), (), cand, subsets, ctx, batch_size)
    elif incremental is not None and fast is not None:
        raw_all = _unit_raw(incremental, incremental.base(x0), pairs, cand, subsets, ctx, batch_size)
    for b0 in range(0, cand.shape[0], batch_size):
        c = cand[b0 : b0 + batch_size]
        a, s, p = c[:, 0], c[:, 1], c[:, 2]
        if screen is not None and raw_all is not None:
            ov = screen.values(raw_all[b0 : b0 + batch_size], a, s, p)
        elif raw_all is not None and fast is not None:
            ov = checked_values(model, objective, fast, raw_all[b0 : b0 + batch_size], x0, ref, ctx.space, a,
                                subsets[s], ctx.values(p))
        else:
            x = x0[a].clone()
            ctx.space.scatter(x, subsets[s], ctx.values(p))
            ov = objective.evaluate(model, x, ref[a])
        best.add(c, b0, ov.score.to(dtype), ov.confidence.to(dtype), ov.success.to(dev))
        if on_batch is not None:
            on_batch(int(c.shape[0]))
    return best.result(cand, inputs, r0, k)


@dataclass
class _UnitBest:
    """Running minima of one unit on the model's device (keys ``a * S + s``: input × subset).

    ``min_conf``/``min_score``/``best_p`` ``(Na·S,)``: per subset the smallest confidence, the
    smallest score and the smallest point index reaching it; ``w_score``/``w_pos`` ``(Na,)``: per
    input the best adversarial row (smallest score, then first row); ``evals`` ``(Na,)``.
    """

    s_count: int
    min_conf: torch.Tensor
    min_score: torch.Tensor
    best_p: torch.Tensor
    w_score: torch.Tensor
    w_pos: torch.Tensor
    evals: torch.Tensor

    @classmethod
    def start(cls, na: int, s_count: int, dtype: torch.dtype, dev: torch.device) -> _UnitBest:
        keys = na * s_count
        return cls(
            s_count, torch.full((keys,), float("inf"), dtype=dtype, device=dev),
            torch.full((keys,), float("inf"), dtype=dtype, device=dev),
            torch.full((keys,), -1, dtype=torch.int64, device=dev),
            torch.full((na,), float("inf"), dtype=dtype, device=dev),
            torch.full((na,), -1, dtype=torch.int64, device=dev), torch.zeros(na, dtype=torch.int64, device=dev),
        )

    def add(self, c: torch.Tensor, b0: int, score: torch.Tensor, conf: torch.Tensor, succ: torch.Tensor) -> None:
        """Fold the rows ``c`` ``(B, 3)`` (candidate rows ``b0 …``) with their values ``(B,)``."""
        a, s, p = c[:, 0], c[:, 1], c[:, 2]
        key = a * self.s_count + s
        bc = torch.full_like(self.min_conf, float("inf")).scatter_reduce(0, key, conf, "amin")
        bs = torch.full_like(self.min_score, float("inf")).scatter_reduce(0, key, score, "amin")
        tie = score == bs[key]
        bp = torch.full_like(self.best_p, _BIG).scatter_reduce(
            0, key, torch.where(tie, p, torch.full_like(p, _BIG)), "amin"
        )
        self.min_conf = torch.minimum(self.min_conf, bc)
        upd = bs < self.min_score  # strict: earlier batches hold smaller p for the same key
        self.min_score = torch.where(upd, bs, self.min_score)
        self.best_p = torch.where(upd, bp, self.best_p)
        self.evals.index_add_(0, a, torch.ones_like(a))
        # the best adversarial row per input, with masks instead of a host sync on ``succ.any()``
        ss = torch.where(succ, score, torch.full_like(score, float("inf")))
        pos = torch.arange(b0, b0 + c.shape[0], device=c.device)
        bws = torch.full_like(self.w_score, float("inf")).scatter_reduce(0, a, ss, "amin")
        tie_w = succ & (ss == bws[a])
        bwp = torch.full_like(self.w_pos, _BIG).scatter_reduce(
            0, a, torch.where(tie_w, pos, torch.full_like(pos, _BIG)), "amin"
        )
        upd_w = (bws < self.w_score) | ((self.w_pos < 0) & (bwp < _BIG))
        self.w_score = torch.where(upd_w, bws, self.w_score)
        self.w_pos = torch.where(upd_w, bwp, self.w_pos)

    def result(self, cand: torch.Tensor, inputs: torch.Tensor, r0: int, k: int) -> UnitResult:
        """The unit's :class:`UnitResult` (top ``k`` subsets per input, on the CPU)."""
        na, sc = self.w_pos.shape[0], self.s_count
        ranks = torch.arange(r0, r0 + sc, device=cand.device).unsqueeze(0).expand(na, sc)
        present = self.best_p.view(na, sc) >= 0
        rank = torch.where(present, ranks, torch.full_like(ranks, -1))
        conf_t, score_t, rank_t, point_t = sort_topk(
            self.min_conf.view(na, sc), self.min_score.view(na, sc), rank, self.best_p.view(na, sc), k
        )
        has_w = self.w_pos >= 0
        wc = cand[self.w_pos.clamp_min(0)]
        w_rank = torch.where(has_w, wc[:, 1] + r0, torch.full_like(self.w_pos, -1))
        w_point = torch.where(has_w, wc[:, 2], torch.full_like(self.w_pos, -1))
        result = UnitResult(
            inputs=inputs.cpu(), conf=conf_t.cpu(), score=score_t.cpu(), rank=rank_t.cpu(),
            point=point_t.cpu(), w_score=self.w_score.cpu(), w_rank=w_rank.cpu(), w_point=w_point.cpu(),
            evaluations=self.evals.cpu(),
        )
        return _pad(result, k)


def _unit_raw(
    inc: IncrementalPrefix, caches: IncrementalCaches, pairs: Sequence[PairTable], cand: torch.Tensor,
    subsets: torch.Tensor, ctx: LevelContext, rows: int,
) -> torch.Tensor:
    """Raw outputs ``(M, K)`` of a unit's candidate rows ``cand`` ``(M, 3)`` through the chain (and
    at ``t = 2`` the pair tables), ``rows`` per call, in cand's order. They are computed subset by
    subset (every input and colour of a subset together), so that a head that multiplies each
    position's weights once for all rows that change it
    (:func:`~l0tre.execution.sparse_head.positional_product`) shares them among many; the order
    of computation changes no value."""
    order = torch.argsort(cand[:, 1], stable=True)
    if pairs and ctx.t == 2:
        c = cand[order]
        raw = _pair_outputs(pairs, inc, caches, c[:, 0], ctx.space.full_index(subsets[c[:, 1]]), c[:, 2], ctx, rows)
    else:
        parts = []
        for b0 in range(0, order.shape[0], rows):
            c = cand[order[b0 : b0 + rows]]
            a, s, p = c[:, 0], c[:, 1], c[:, 2]
            parts.append(chain_raw(inc, caches, ctx.space, a, subsets[s], ctx.values(p)))
        raw = torch.cat(parts)
    out = torch.empty_like(raw)
    out[order] = raw
    return out


def _pair_outputs(
    pairs: Sequence[PairTable], inc: IncrementalPrefix, caches: IncrementalCaches, a: torch.Tensor,
    feat: torch.Tensor, p: torch.Tensor, ctx: LevelContext, rows: int,
) -> torch.Tensor:
    """Raw outputs ``(B, K)`` of level-2 rows: each from the first pair table that covers it
    (deepest first), the rest through the chain (up to the table's convolution when the table
    has a sparse head: :meth:`~l0tre.execution.pairs.PairTable.chain_outputs`); at most ``rows``
    rows of one kind per call (so the rows no table covers come in full calls too)."""
    parts = []
    left = torch.arange(a.shape[0], device=a.device)
    for table in pairs:
        far = table.disjoint(feat[left])
        idx, left = left[far], left[~far]
        for r in idx.split(rows) if idx.numel() else ():
            parts.append((r, table.outputs(a[r], feat[r], ctx.digits[p[r]])))
    for r in left.split(rows) if left.numel() else ():
        if pairs and pairs[0].head is not None:
            parts.append((r, pairs[0].chain_outputs(a[r], feat[r], ctx.digits[p[r]], ctx.values(p[r]))))
        else:
            parts.append((r, inc.outputs(caches, a[r], feat[r], ctx.values(p[r]))))
    raw = parts[0][1].new_empty((a.shape[0], parts[0][1].shape[1]))
    for r, out in parts:
        raw[r] = out
    return raw


def _pad(u: UnitResult, k: int) -> UnitResult:
    """Pad the top-K columns to exactly ``k`` (units smaller than ``k`` subsets)."""
    missing = k - u.conf.shape[1]
    if missing <= 0:
        return u
    e = empty_unit(u.inputs, missing, u.conf.dtype)
    u.conf = torch.cat([u.conf, e.conf], 1)
    u.score = torch.cat([u.score, e.score], 1)
    u.rank = torch.cat([u.rank, e.rank], 1)
    u.point = torch.cat([u.point, e.point], 1)
    return u
