"""Tightening: revert changed features while the example stays adversarial.

Batched greedy: for every input try all single reverts at once, keep the one with the
lowest score (margin for ``j``) among those still adversarial, repeat until no single
revert keeps the example adversarial.
"""

from __future__ import annotations

import torch

from ..classifier import Classifier
from ..execution.incremental import IncrementalPrefix
from ..objectives import Objective, ObjectiveValues, from_outputs_capability
from .features import FeatureSpace
from .sensitivity import chain_values

__all__ = ["tighten"]

_BIG = torch.iinfo(torch.int64).max


def tighten(
    model: Classifier,
    objective: Objective,
    space: FeatureSpace,
    x0: torch.Tensor,
    ref: torch.Tensor,
    x_adv: torch.Tensor,
    *,
    batch_size: int,
    incremental: IncrementalPrefix | None = None,
) -> tuple[torch.Tensor, int]:
    """Greedy single-feature reverts.

    Args:
        x0: ``(Na, C, H, W)`` originals; ``x_adv``: ``(Na, C, H, W)`` adversarial examples.
        incremental: evaluate each revert as a one-feature change of the current example through
            this chain (rows near the decision boundary are re-checked with the plain forward).

    Returns:
        the tightened examples ``(Na, C, H, W)`` and the number of model evaluations.
    """
    dev = x0.device
    na = x0.shape[0]
    x = x_adv.clone()
    orig = space.values(x0)
    active = torch.ones(na, dtype=torch.bool, device=dev)
    evaluations = 0
    dtype = torch.float32 if x0.dtype in (torch.float16, torch.bfloat16) else x0.dtype
    while bool(active.any()):
        changed = space.changed(x, x0) & active.unsqueeze(1)
        cand = changed.nonzero()  # (M, 2): (input, feature), row-major
        if cand.shape[0] == 0:
            break
        best_score = torch.full((na,), float("inf"), dtype=dtype, device=dev)
        best_row = torch.full((na,), _BIG, dtype=torch.int64, device=dev)
        fast = from_outputs_capability(objective) if incremental is not None else None
        if fast is not None and incremental is not None:
            rows_of = cand[:, 0].unique()  # images whose reverts are evaluated this round
            local = torch.full((na,), -1, dtype=torch.int64, device=dev)
            local[rows_of] = torch.arange(rows_of.shape[0], device=dev)
            base_x, base_ref = x[rows_of], ref[rows_of]
            caches = incremental.base(base_x)
        for b0 in range(0, cand.shape[0], batch_size):
            c = cand[b0 : b0 + batch_size]
            a, f = c[:, 0], c[:, 1]
            ov: ObjectiveValues
            if fast is not None and incremental is not None:
                ov = chain_values(model, objective, fast, incremental, caches, base_x, base_ref, space,
                                  local[a], f.unsqueeze(1), orig[a, f].unsqueeze(1))
            else:
                xb = x[a].clone()
                space.scatter(xb, f.unsqueeze(1), orig[a, f].unsqueeze(1))
                ov = objective.evaluate(model, xb, ref[a])
            evaluations += int(c.shape[0])
            succ = ov.success.to(dev)
            if not bool(succ.any()):
                continue
            sa, ss = a[succ], ov.score.to(dtype)[succ]
            rows = torch.arange(b0, b0 + c.shape[0], device=dev)[succ]
            bs = torch.full_like(best_score, float("inf")).scatter_reduce(0, sa, ss, "amin")
            tie = ss == bs[sa]
            br = torch.full_like(best_row, _BIG).scatter_reduce(
                0, sa, torch.where(tie, rows, torch.full_like(rows, _BIG)), "amin"
            )
            upd = (bs < best_score) | ((best_row == _BIG) & (br < _BIG))
            best_score = torch.where(upd, bs, best_score)
            best_row = torch.where(upd, br, best_row)
        hit = best_row < _BIG
        if not bool(hit.any()):
            break
        h = hit.nonzero().squeeze(1)
        f = cand[best_row[h], 1]
        xh = x[h].clone()
        space.scatter(xh, f.unsqueeze(1), orig[h, f].unsqueeze(1))
        x[h] = xh
        active = hit
    return x, evaluations
