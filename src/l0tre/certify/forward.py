"""Forward-mode linear bounds in terms of the box's free input coordinates.

A box ``[lo, hi]`` with ``n`` free coordinates (``lo < hi``) is written as
``x = centre + Σ_i e_i · radius_i · onehot(free_i)`` with ``e ∈ [-1, 1]^n``. Every node then
carries ``lw·e + lb ≤ z ≤ uw·e + ub`` with ``lw, uw`` ``(B, n, *shape)`` and ``lb, ub``
``(B, *shape)``. With few free coordinates (an L0 box), this costs about ``2(n+1)`` forward
passes and is much tighter than interval propagation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from l0tre.certify import ops as O
from l0tre.certify.relax import PoolRelax, ReluRelax

__all__ = ["LinBounds", "affine_with_interval", "concretize", "input_bounds", "propagate"]


@dataclass(frozen=True)
class LinBounds:
    """Linear bounds of one node; ``exact`` means lower and upper are the same objects."""

    lw: Tensor
    lb: Tensor
    uw: Tensor
    ub: Tensor

    @property
    def exact(self) -> bool:
        return self.lw is self.uw and self.lb is self.ub


def input_bounds(centre: Tensor, radius: Tensor, free: Tensor, valid: Tensor) -> LinBounds:
    """The input node: ``centre``/``radius`` ``(B, *shape)``; ``free`` ``(B, n)`` distinct flat
    indices of the free coordinates, ``valid`` ``(B, n)`` marks real (non-padding) entries."""
    b, n = free.shape
    w = centre.new_zeros((b, n, centre[0].numel()))
    vals = radius.flatten(1).gather(1, free) * valid.to(radius.dtype)
    w.scatter_(2, free.unsqueeze(2), vals.unsqueeze(2))
    w = w.view(b, n, *centre.shape[1:])
    return LinBounds(w, centre, w, centre)


def concretize(lin: LinBounds) -> tuple[Tensor, Tensor]:
    """Interval bounds ``(B, *shape)`` over ``e ∈ [-1, 1]^n``."""
    rad = lin.lw.abs().sum(1)
    if lin.exact:
        return lin.lb - rad, lin.lb + rad
    return lin.lb - rad, lin.ub + lin.uw.abs().sum(1)


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def affine_with_interval(op: O.AffineOp, x: LinBounds, lo: Tensor, hi: Tensor
                         ) -> tuple[LinBounds, tuple[Tensor, Tensor]]:
    """Forward-mode bounds of an affine node together with its interval bounds from the
    input interval ``[lo, hi]``, in two batched calls of the operation.

    Uses ``L⁺p + L⁻q = L(p+q)/2 - |L|(q-p)/2`` and ``L⁺q + L⁻p = L(p+q)/2 + |L|(q-p)/2``."""
    b, n = x.lw.shape[:2]
    if x.exact:
        parts = [_flat(x.lw), x.lb, (lo + hi) / 2]
        out = op.linear(torch.cat(parts))
        w = out[: b * n].view(b, n, *op.out_shape)
        c = out[b * n: b * n + b]
        c = c if op.bias is None else c + op.bias
        mid = out[b * n + b:]
        mid = mid if op.bias is None else mid + op.bias
        rad = op.abs_linear((hi - lo) / 2)
        return LinBounds(w, c, w, c), (mid - rad, mid + rad)
    mids = torch.cat([_flat(x.lw + x.uw) / 2, (x.lb + x.ub) / 2, (lo + hi) / 2])
    rads = torch.cat([_flat(x.uw - x.lw) / 2, (x.ub - x.lb) / 2, (hi - lo) / 2])
    m, r = op.linear(mids), op.abs_linear(rads)
    lin_w = (m[: b * n] - r[: b * n]).view(b, n, *op.out_shape)
    lin_uw = (m[: b * n] + r[: b * n]).view(b, n, *op.out_shape)
    mc, rc = m[b * n: b * n + b], r[b * n: b * n + b]
    mi, ri = m[b * n + b:], r[b * n + b:]
    if op.bias is not None:
        mc, mi = mc + op.bias, mi + op.bias
    return LinBounds(lin_w, mc - rc, lin_uw, mc + rc), (mi - ri, mi + ri)


def _affine(op: O.AffineOp, x: LinBounds) -> LinBounds:
    b, n = x.lw.shape[:2]
    if x.exact:
        w = op.linear(_flat(x.lw)).view(b, n, *op.out_shape)
        c = op.forward(x.lb)
        return LinBounds(w, c, w, c)
    lw = op.pos_neg(_flat(x.lw), _flat(x.uw)).view(b, n, *op.out_shape)
    uw = op.pos_neg(_flat(x.uw), _flat(x.lw)).view(b, n, *op.out_shape)
    lb = op.pos_neg(x.lb, x.ub)
    ub = op.pos_neg(x.ub, x.lb)
    if op.bias is not None:
        lb, ub = lb + op.bias, ub + op.bias
    return LinBounds(lw, lb, uw, ub)


def _add(op: O.AddOp, ins: list[LinBounds]) -> LinBounds:
    exact = all(x.exact for x in ins)
    parts_l: list[tuple[Tensor, Tensor]] = []
    parts_u: list[tuple[Tensor, Tensor]] = []
    for c, x in zip(op.coeffs, ins, strict=True):
        if c >= 0:
            parts_l.append((x.lw * c, x.lb * c))
            parts_u.append((x.uw * c, x.ub * c))
        else:
            parts_l.append((x.uw * c, x.ub * c))
            parts_u.append((x.lw * c, x.lb * c))
    lw = torch.stack([p[0] for p in parts_l]).sum(0)
    lb = torch.stack([p[1] for p in parts_l]).sum(0)
    if exact and all(c >= 0 for c in op.coeffs):
        return LinBounds(lw, lb, lw, lb)
    uw = torch.stack([p[0] for p in parts_u]).sum(0)
    ub = torch.stack([p[1] for p in parts_u]).sum(0)
    return LinBounds(lw, lb, uw, ub)


def _relu(x: LinBounds, r: ReluRelax) -> LinBounds:
    a, s = r.lower_slope.unsqueeze(1), r.upper_slope.unsqueeze(1)
    lw, lb = x.lw * a, x.lb * r.lower_slope
    if x.exact and not r.any_unstable:
        return LinBounds(lw, lb, lw, lb)
    return LinBounds(lw, lb, x.uw * s, x.ub * r.upper_slope + r.upper_bias)


def _gather(t: Tensor, idx: Tensor, lead: int) -> Tensor:
    """``t`` ``(B, [n,] C, H, W)`` at ``idx`` ``(B, C, L)`` → ``(B, [n,] C, L)``."""
    flat = t.flatten(-2)
    if lead:
        index = idx.unsqueeze(1).expand(t.shape[0], t.shape[1], *idx.shape[1:])
    else:
        index = idx
    return flat.gather(-1, index)


def _pool(op: O.MaxPoolOp, x: LinBounds, r: PoolRelax) -> LinBounds:
    b, n = x.lw.shape[:2]
    shape = op.out_shape
    lw = _gather(x.lw, r.idx, 1).view(b, n, *shape)
    lb = _gather(x.lb, r.idx, 0).view(b, *shape)
    if x.exact and r.all_dominated:
        return LinBounds(lw, lb, lw, lb)
    dom = r.dominated
    uw = (_gather(x.uw, r.idx, 1) * dom.unsqueeze(1).to(lw.dtype)).view(b, n, *shape)
    ub = torch.where(dom, _gather(x.ub, r.idx, 0), r.umax).view(b, *shape)
    return LinBounds(lw, lb, uw, ub)


def propagate(op: O.Op, ins: list[LinBounds], relax: ReluRelax | PoolRelax | None) -> LinBounds:
    """Linear bounds of ``op``'s output (``relax`` for ReLU / max-pool nodes)."""
    if isinstance(op, O.AffineOp):
        return _affine(op, ins[0])
    if isinstance(op, O.AddOp):
        return _add(op, ins)
    if isinstance(op, O.ReluOp) and isinstance(relax, ReluRelax):
        return _relu(ins[0], relax)
    if isinstance(op, O.MaxPoolOp) and isinstance(relax, PoolRelax):
        return _pool(op, ins[0], relax)
    raise TypeError(f"no forward rule for {op.describe()}")
