"""The search state of one shard of inputs and its access to the model.

All moves work on a *shard* of ``A`` inputs at once and keep, per input, the current example
``x`` ``(A, C, H, W)``, whether it is adversarial (``found``) and its margin (``score``, the
:class:`~l0tre.objectives.Misclassification` margin ``s_j − max_{k≠j} s_k``; negative when
adversarial). A *candidate row* is one edited copy of an example; rows are built chunk by chunk
(``batch_size`` rows per model call) and reduced per input with a total order (lowest score,
then lowest row, :func:`pick`), so results do not depend on the batch size.

The moves themselves live with their concept: :mod:`.screening` (the t = 1 pass),
:mod:`.additions` (candidate single-feature additions), :mod:`.paths` (candidate examples) and
:mod:`.moves` (refinement).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ...classifier import Classifier
from ...engine.features import FeatureSpace
from ...engine.sensitivity import chain_values
from ...engine.tighten import tighten as engine_tighten
from ...execution.incremental import IncrementalPrefix
from ...execution.precision import Rechecked
from ...objectives import Misclassification, ObjectiveValues, from_outputs_capability
from .settings import SearchConfig

__all__ = ["BIG", "INF", "CountingObjective", "Deadline", "SearchContext", "Searcher", "pick"]

BIG = torch.iinfo(torch.int64).max
INF = float("inf")


class CountingObjective(Misclassification):
    """:class:`Misclassification` that counts the model rows it evaluates (``rows``)."""

    def __init__(self) -> None:
        self.rows = 0

    def evaluate(self, model: Classifier, x: torch.Tensor, ref: torch.Tensor) -> ObjectiveValues:
        self.rows += int(x.shape[0])
        return super().evaluate(model, x, ref)


class Deadline:
    """A wall-clock budget of ``per_input`` seconds per searched input (``None``: none).

    The clock starts at construction; every :meth:`grant` of ``k`` inputs adds ``k ×
    per_input`` seconds to the allowance, so that the inputs granted so far never take more than
    their share in total (time a shard leaves unused passes on to the next).
    """

    def __init__(self, per_input: float | None) -> None:
        self.per_input = per_input
        self.origin = time.perf_counter()
        self.at: float | None = None if per_input is None else self.origin
        self.hit = False

    def grant(self, inputs: int) -> None:
        """Extend the allowance by ``inputs`` × ``per_input`` seconds."""
        if self.per_input is not None and self.at is not None:
            self.at += inputs * self.per_input

    def passed(self) -> bool:
        """Whether the allowance is used up now (``hit`` records that it ever was)."""
        if self.at is not None and time.perf_counter() >= self.at:
            self.hit = True
            return True
        return False


def pick(owner: torch.Tensor, score: torch.Tensor, ok: torch.Tensor, na: int) -> torch.Tensor:
    """Per owner, the row with the lowest score among ``ok`` rows (ties: lowest row).

    Args:
        owner: ``(R,)`` owner index in ``[0, na)``; score: ``(R,)``; ok: ``(R,)`` bool.

    Returns:
        LongTensor ``(na,)``: the chosen row, ``-1`` where an owner has no ``ok`` row.
    """
    dev = score.device
    ok = ok & ~torch.isnan(score)
    key = torch.where(ok, score, torch.full_like(score, INF))
    best = torch.full((na,), INF, dtype=score.dtype, device=dev).scatter_reduce(0, owner, key, "amin")
    hit = ok & (key == best[owner])
    rows = torch.arange(score.shape[0], device=dev)
    br = torch.full((na,), BIG, dtype=torch.int64, device=dev).scatter_reduce(0, owner[hit], rows[hit], "amin")
    return torch.where(br < BIG, br, torch.full_like(br, -1))


@dataclass(frozen=True, eq=False)
class SearchContext:
    """What the searches of all shards share.

    Attributes:
        model: the classifier; space: the feature space searched.
        palette: ``(P, Cf)`` the ε-grid colours; fine: ``(Q, Cf)`` colours for re-colouring
            (both on the model's device).
        config: the search settings; deadline: the time budget.
        batch_size: rows per model call; grad_rows: rows per gradient call.
        differentiable: gradients of the model are available.
        chain: the engine's incremental chain (:class:`~l0tre.execution.incremental.IncrementalPrefix`)
            through which the exact screen and the tightening evaluate their one-feature changes in
            full precision (rows near the decision boundary re-checked by a plain forward pass);
            ``None``: plain forward passes with the search objective. chain_rows: rows per call
            through it (cheaper rows, larger calls; 0: ``batch_size``).
    """

    model: Classifier
    space: FeatureSpace
    palette: torch.Tensor
    fine: torch.Tensor
    config: SearchConfig
    deadline: Deadline
    batch_size: int
    grad_rows: int
    differentiable: bool
    chain: IncrementalPrefix | None = None
    chain_rows: int = 0  # rows per call through the chain (0: batch_size)


class Searcher:
    """Search state and model access for one shard of ``A`` inputs.

    Args:
        ctx: the shared settings.
        x0: ``(A, C, H, W)`` originals (model device and dtype); ref: ``(A,)`` labels ``j``.
        objective: a counting objective, or one re-checked from low precision.

    Attributes:
        pool_feat, pool_col, pool_ok, pool_score: ``(A, K)`` the screening ranking (feature,
            palette index, present, margin), filled by :func:`~.screening.screen`.
        gradients: rows whose margin gradient was computed.
    """

    def __init__(
        self, ctx: SearchContext, x0: torch.Tensor, ref: torch.Tensor, objective: CountingObjective | Rechecked
    ) -> None:
        self.model, self.space, self.x0, self.ref = ctx.model, ctx.space, x0, ref
        self.palette, self.fine, self.objective = ctx.palette, ctx.fine, objective
        self.batch_size, self.grad_rows = ctx.batch_size, ctx.grad_rows
        self.differentiable, self.cfg, self.deadline = ctx.differentiable, ctx.config, ctx.deadline
        self.chain, self.chain_rows = ctx.chain, ctx.chain_rows or ctx.batch_size
        # full precision, for the chain's rows (a Rechecked objective wraps the counting one)
        inner = objective.objective if isinstance(objective, Rechecked) else objective
        self.exact_objective = inner if isinstance(inner, CountingObjective) else CountingObjective()
        self.na = x0.shape[0]
        self.dev = x0.device
        self.orig = self.space.values(x0)  # (A, n, Cf)
        self.gradients = 0
        self.pool_feat = torch.zeros(self.na, 0, dtype=torch.int64, device=self.dev)
        self.pool_col = torch.zeros_like(self.pool_feat)
        self.pool_ok = torch.zeros(self.na, 0, dtype=torch.bool, device=self.dev)
        self.pool_score = torch.zeros(self.na, 0, dtype=torch.float64, device=self.dev)

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

        One-feature edits with an ``index`` go through the incremental ``chain`` when there is one
        (full precision; rows near the boundary re-checked by a plain forward pass).
        """
        if self.chain is not None and index is not None and feat.shape[1] == 1 and owner.shape[0]:
            return self._chain_edits(base, owner, feat, val, index, self.chain)
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

    def _chain_edits(self, base: torch.Tensor, owner: torch.Tensor, feat: torch.Tensor, val: torch.Tensor,
                     index: torch.Tensor, chain: IncrementalPrefix) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`evaluate_edits` of one-feature edits (``feat`` ``(R, 1)``) through ``chain``."""
        fast = from_outputs_capability(self.exact_objective)
        if fast is None:
            raise RuntimeError("the incremental chain needs an objective with from_outputs")
        base_ref = torch.zeros(base.shape[0], dtype=self.ref.dtype, device=self.dev)
        base_ref[index] = self.ref[owner]
        caches = chain.base(base)
        scores, succ, labels = [], [], []
        for b0 in range(0, owner.shape[0], self.chain_rows):
            sl = slice(b0, b0 + self.chain_rows)
            ov = chain_values(self.model, self.exact_objective, fast, chain, caches, base, base_ref, self.space,
                              index[sl], feat[sl], val[sl])
            self.exact_objective.rows += int(feat[sl].shape[0])
            scores.append(ov.score.to(self.dev, torch.float64))
            succ.append(ov.success.to(self.dev))
            labels.append(ov.label.to(self.dev))
        return torch.cat(scores), torch.cat(succ), torch.cat(labels)

    def margins_of(self, rows: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score and success ``(B,)`` of examples ``x`` ``(B, C, H, W)`` of inputs ``rows``."""
        b = x.shape[0]
        score, succ, _ = self.evaluate_edits(
            x, rows, torch.zeros(b, 0, dtype=torch.int64, device=self.dev),
            torch.zeros(b, 0, self.space.channels, dtype=x.dtype, device=self.dev),
        )
        return score, succ

    def margin_grad(self, x: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """Gradient of the margin w.r.t. the pixel-space input, ``(R, C, H, W)``."""
        return self.margin_value_grad(x, owner)[1]

    def margin_value_grad(self, x: torch.Tensor, owner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The margin ``s_j − max_{k≠j} s_k`` ``(R,)`` of rows ``x`` and its gradient w.r.t. the
        pixel-space input ``(R, C, H, W)``."""
        module = self.model.modules()
        if module is None:
            raise RuntimeError("margin_grad: the model is not a torch.nn.Module")
        pre = self.model.preprocessing
        # detached parameters: autograd then skips the weight gradients (not for TorchScript)
        scripted = isinstance(module, torch.jit.ScriptModule)
        frozen = {} if scripted else {k: v.detach() for k, v in module.state_dict(keep_vars=True).items()}
        grads, values = [], []
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
                margin = s_j - others
                (g,) = torch.autograd.grad(margin.sum(), xb)
            grads.append(g.detach())
            values.append(margin.detach())
            self.gradients += int(xb.shape[0])
        if not grads:
            return torch.zeros(0, dtype=x.dtype, device=x.device), torch.zeros_like(x)
        return torch.cat(values), torch.cat(grads)

    def tighten(self, owner: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The engine's greedy single reverts of adversarial rows ``x`` ``(R, C, H, W)``."""
        if x.shape[0] == 0:
            return x
        if self.chain is None:
            xt, _ = engine_tighten(self.model, self.objective, self.space, self.x0[owner], self.ref[owner], x,
                                   batch_size=self.batch_size)
            return xt
        xt, rows = engine_tighten(self.model, self.exact_objective, self.space, self.x0[owner], self.ref[owner], x,
                                  batch_size=self.chain_rows, incremental=self.chain)
        self.exact_objective.rows += rows
        return xt
