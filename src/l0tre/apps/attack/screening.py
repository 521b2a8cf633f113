"""Screening: single-feature sensitivities (the paper's level t = 1) of a shard's inputs.

The engine's t = 1 pass (:func:`~l0tre.engine.sensitivity.evaluate_unit`) runs over every
feature × ε-grid colour (``exact``) or over the ``candidates`` (feature, colour) pairs ranked
best by a first-order estimate of the margin (``gradient``). Its ranking becomes the search's
*pool* of additions; a single-feature adversarial example ends the search for its input (L0 = 1
is minimal).
"""

from __future__ import annotations

import torch

from ...engine.sensitivity import LevelContext, UnitResult, evaluate_unit
from ...engine.subspaces import binomial_table
from .additions import additions
from .searcher import BIG, INF, Searcher
from .settings import Screen

__all__ = ["screen", "witness"]


def screen(s: Searcher) -> UnitResult:
    """Single-feature sensitivities (the engine's t = 1 pass); fills the pool ranking of ``s``
    (by margin, then feature).

    Returns:
        the :class:`UnitResult` (CPU): per input all screened features sorted by (confidence,
        margin, feature), their argmin colour and the best single-feature adversarial example
        (``w_rank``/``w_point``, ``-1`` where none).
    """
    n, p = s.space.n, s.palette.shape[0]
    valid = (s.orig.unsqueeze(2) != s.palette.view(1, 1, p, -1)).any(3)  # (A, n, P)
    if s.cfg.screen is Screen.GRADIENT and s.cfg.preset.candidates < n * p:
        owner = torch.arange(s.na, device=s.dev)
        row, feat, col = additions(s, s.x0, owner, s.cfg.preset.candidates, 0)
        sel = torch.zeros_like(valid)
        sel[row, feat, col] = True
        valid = valid & sel
    ctx = LevelContext.build(s.space, s.palette, 1, binomial_table(n, 1))
    if s.chain is None:
        unit = evaluate_unit(
            s.model, s.objective, s.x0, s.ref, valid, torch.arange(s.na), ctx, 0, n, batch_size=s.batch_size, k=n,
        )
    else:  # full precision through the incremental chain (one pixel's window per row)
        unit = evaluate_unit(
            s.model, s.exact_objective, s.x0, s.ref, valid, torch.arange(s.na), ctx, 0, n,
            batch_size=s.chain_rows, k=n, incremental=s.chain,
        )
        s.exact_objective.rows += int(unit.evaluations.sum())
    present = unit.rank >= 0
    score = torch.where(present, unit.score, torch.full_like(unit.score, INF))
    order = torch.argsort(torch.where(present, unit.rank, torch.full_like(unit.rank, BIG)), dim=1, stable=True)
    order = order.gather(1, torch.argsort(score.gather(1, order), dim=1, stable=True))
    s.pool_feat = unit.rank.gather(1, order).clamp_min(0).to(s.dev)
    s.pool_col = unit.point.gather(1, order).clamp_min(0).to(s.dev)
    s.pool_ok = present.gather(1, order).to(s.dev)
    s.pool_score = score.gather(1, order).to(s.dev)
    return unit


def witness(s: Searcher, unit: UnitResult) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-feature adversarial examples of the screening: ``found`` ``(A,)`` and the
    examples ``(A, C, H, W)`` (the original where none)."""
    has = (unit.w_rank >= 0).to(s.dev)
    x = s.x0.clone()
    if bool(has.any()):
        h = has.nonzero().squeeze(1)
        xh = x[h]
        s.space.scatter(xh, unit.w_rank.to(s.dev)[h].unsqueeze(1), s.palette[unit.w_point.to(s.dev)[h]].unsqueeze(1))
        x[h] = xh
    return has, x
