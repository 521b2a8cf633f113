"""Interval propagation and linear relaxations of the non-linear operations.

Shapes: ``B`` boxes; per-sample shapes as in :mod:`l0tre.certify.ops`. Interval bounds are
pairs ``(l, u)`` of ``(B, *shape)`` tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from l0tre.certify import ops as O

__all__ = ["PoolRelax", "ReluRelax", "interval", "pool_relax", "relu_relax"]

Interval = tuple[Tensor, Tensor]


def interval(op: O.Op, ins: list[Interval]) -> Interval:
    """Interval bounds of ``op``'s output from its inputs' bounds (IBP, centre/radius form)."""
    if isinstance(op, O.AffineOp):
        lo, hi = ins[0]
        c, r = (hi + lo) / 2, (hi - lo) / 2
        yc, yr = op.forward(c), op.abs_linear(r)
        return yc - yr, yc + yr
    if isinstance(op, O.AddOp):
        out_l: Tensor | None = None
        out_u: Tensor | None = None
        for coeff, (lo, hi) in zip(op.coeffs, ins, strict=True):
            a, b = (lo * coeff, hi * coeff) if coeff >= 0 else (hi * coeff, lo * coeff)
            out_l = a if out_l is None else out_l + a
            out_u = b if out_u is None else out_u + b
        assert out_l is not None and out_u is not None
        return out_l, out_u
    if isinstance(op, O.ReluOp):
        return ins[0][0].clamp(min=0), ins[0][1].clamp(min=0)
    if isinstance(op, O.MaxPoolOp):
        return op.forward(ins[0][0]), op.forward(ins[0][1])
    raise TypeError(f"no interval rule for {op.describe()}")


@dataclass(frozen=True)
class ReluRelax:
    """``lower_slope·x ≤ relu(x) ≤ upper_slope·x + upper_bias`` for ``x ∈ [l, u]``; all
    ``(B, *shape)``. Stable neurons are exact (slopes 1/1 or 0/0, bias 0)."""

    lower_slope: Tensor
    upper_slope: Tensor
    upper_bias: Tensor
    any_unstable: bool


def relu_relax(lo: Tensor, hi: Tensor) -> ReluRelax:
    """Triangle relaxation; the lower slope is the adaptive CROWN choice (1 if ``u ≥ -l``)."""
    active = lo >= 0
    unstable = (lo < 0) & (hi > 0)
    denom = torch.where(unstable, hi - lo, torch.ones_like(hi))
    s = torch.where(unstable, hi / denom, active.to(hi.dtype))
    bias = torch.where(unstable, -s * lo, torch.zeros_like(lo))
    alpha = torch.where(unstable, (hi >= -lo).to(hi.dtype), active.to(hi.dtype))
    return ReluRelax(alpha, s, bias, bool(unstable.any()))


@dataclass(frozen=True)
class PoolRelax:
    """Max-pool relaxation, all ``(B, C, Ho*Wo)``: ``x[idx] ≤ y``; ``y ≤ x[idx]`` where
    ``dominated`` (that input is provably the maximum), else ``y ≤ umax``. ``idx`` is the
    flat input position ``h*W + w``."""

    idx: Tensor
    dominated: Tensor
    umax: Tensor
    all_dominated: bool


def pool_relax(op: O.MaxPoolOp, lo: Tensor, hi: Tensor) -> PoolRelax:
    """DeepPoly-style max-pool relaxation from input bounds ``(B, C, H, W)``."""
    lw, uw = op.windows(lo), op.windows(hi)  # (B, C, kk, L)
    lstar, jstar = lw.max(dim=2)
    umax = uw.max(dim=2).values
    others = uw.scatter(2, jstar.unsqueeze(2), float("-inf")).max(dim=2).values
    dominated = lstar >= others
    idx = op.index_map[jstar, torch.arange(jstar.shape[-1], device=jstar.device)]
    return PoolRelax(idx, dominated, umax, bool(dominated.all()))
