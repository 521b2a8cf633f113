"""Backward (CROWN / DeepPoly) linear bound propagation.

Given a node ``t`` and coefficient rows ``A`` ``(B, M, *shape_t)``, :func:`backward` returns
``(B, M)`` lower bounds of ``A · z_t`` over the box, walking the DAG backwards and replacing
each ReLU / max-pool by its linear relaxation (chosen per sign of the coefficient).

The walk can stop early at chosen nodes and *substitute* bounds known there: interval
bounds (``"interval"``, this is IBP with the last affine layers folded in) or forward-mode
linear bounds (``"linear"``, see :mod:`l0tre.certify.forward`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from l0tre.certify import ops as O
from l0tre.certify.forward import LinBounds
from l0tre.certify.graph import Graph
from l0tre.certify.perbox import uncrop_shifted
from l0tre.certify.relax import PoolRelax, ReluRelax
from l0tre.certify.window import Plan, uncrop

__all__ = ["BackwardContext", "backward"]


@dataclass
class BackwardContext:
    """What the backward walk needs about one batch of boxes.

    Attributes:
        centre, radius: the input box ``(B, *shape)`` as the plan holds the input node.
        relax: relaxation of every ReLU / max-pool node the walk may cross (by node index).
        intervals: interval bounds of nodes where ``"interval"`` substitution happens.
        linear: forward-mode bounds of nodes where ``"linear"`` substitution happens.
        substitute: node index → ``"interval"`` or ``"linear"``.
    """

    centre: Tensor
    radius: Tensor
    relax: dict[int, ReluRelax | PoolRelax] = field(default_factory=dict)
    intervals: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    linear: dict[int, LinBounds] = field(default_factory=dict)
    substitute: Mapping[int, str] = field(default_factory=dict)


def _dot(a: Tensor, t: Tensor) -> Tensor:
    """``Σ a * t`` over the per-sample dims: ``a`` ``(B, M, *s)``, ``t`` ``(B, *s)`` →
    ``(B, M)``."""
    b, m = a.shape[:2]
    return torch.bmm(a.reshape(b, m, -1), t.reshape(b, -1, 1)).squeeze(2)


def _accumulate(acc: dict[int, Tensor], j: int, a: Tensor) -> None:
    if j in acc:
        acc[j] = acc[j] + a
    else:
        acc[j] = a


def backward(graph: Graph, plan: Plan, start: int, a_start: Tensor, ctx: BackwardContext
             ) -> Tensor:
    """Lower bounds ``(B, M)`` of ``a_start · z_start``; ``a_start`` ``(B, M, *shape)`` in the
    shape the plan holds node ``start`` in (see :mod:`l0tre.certify.window`)."""
    b, m = a_start.shape[:2]
    total = a_start.new_zeros((b, m))
    lin_coef: Tensor | None = None
    acc: dict[int, Tensor] = {start: a_start}

    def push(i: int, k: int, a_in: Tensor) -> None:
        nonlocal total
        j = graph.nodes[i].inputs[k]
        box = plan.crops[i][k]
        if box is not None:
            shape = graph.nodes[j].shape
            g = plan.geom[j]
            if plan.shift is not None and g is not None:
                a_in, extra = uncrop_shifted(a_in, box, g, plan.ref.get(j), (shape[1], shape[2]),
                                             plan.shift, plan.geom[i] is not None)
            else:
                a_in, extra = uncrop(a_in, box, g, plan.ref.get(j), (shape[1], shape[2]))
            if extra is not None:
                total = total + extra
        _accumulate(acc, j, a_in)

    for i in sorted(graph.ancestors(start), reverse=True):
        a = acc.pop(i, None)
        if a is None:
            continue
        how = ctx.substitute.get(i)
        if how == "interval":
            lo, hi = ctx.intervals[i]
            total = total + _dot(a.clamp(min=0), lo) + _dot(a.clamp(max=0), hi)
            continue
        if how == "linear":
            lin = ctx.linear[i]
            ap, an = a.clamp(min=0), a.clamp(max=0)
            n = lin.lw.shape[1]
            coef = torch.bmm(ap.reshape(b, m, -1), lin.lw.reshape(b, n, -1).transpose(1, 2))
            coef = coef + torch.bmm(an.reshape(b, m, -1), lin.uw.reshape(b, n, -1).transpose(1, 2))
            lin_coef = coef if lin_coef is None else lin_coef + coef
            total = total + _dot(ap, lin.lb) + _dot(an, lin.ub)
            continue
        op = plan.ops[i]
        if op is None:  # the input
            total = total + _dot(a, ctx.centre) - _dot(a.abs(), ctx.radius)
            continue
        if isinstance(op, O.AffineOp):
            if b > 1 and a.stride(0) == 0:  # the same rows for every box: compute them once
                flat = a[:1].reshape(m, *op.out_shape)
                total = total + op.bias_dot(flat).view(1, m)
                push(i, 0, op.backward(flat).view(1, m, *op.in_shape).expand(b, m, *op.in_shape))
                continue
            flat = a.reshape(b * m, *op.out_shape)
            total = total + op.bias_dot(flat).view(b, m)
            push(i, 0, op.backward(flat).view(b, m, *op.in_shape))
        elif isinstance(op, O.AddOp):
            for k, c in enumerate(op.coeffs):
                push(i, k, a if c == 1.0 else a * c)
        elif isinstance(op, O.ReluOp):
            r = ctx.relax[i]
            assert isinstance(r, ReluRelax)
            if r.any_unstable:
                ap, an = a.clamp(min=0), a.clamp(max=0)
                a_in = ap * r.lower_slope.unsqueeze(1) + an * r.upper_slope.unsqueeze(1)
                total = total + _dot(an, r.upper_bias)
            else:
                a_in = a * r.lower_slope.unsqueeze(1)
            push(i, 0, a_in)
        elif isinstance(op, O.MaxPoolOp):
            r = ctx.relax[i]
            assert isinstance(r, PoolRelax)
            push(i, 0, _pool_back(op, a, r))
            if not r.all_dominated:
                an = a.clamp(max=0).flatten(3)
                loose = (~r.dominated).to(a.dtype) * r.umax
                total = total + (an * loose.unsqueeze(1)).flatten(2).sum(2)
        else:
            raise TypeError(f"no backward rule for {op.describe()}")
    if lin_coef is not None:
        total = total - lin_coef.abs().sum(2)
    return total


def _pool_back(op: O.MaxPoolOp, a: Tensor, r: PoolRelax) -> Tensor:
    """Coefficients on the pool input: ``a⁺`` (lower relaxation) and ``a⁻`` where dominated
    (upper relaxation ``y ≤ x[idx]``) go to ``x[idx]``."""
    b, m = a.shape[:2]
    c, h, w = op.in_shape
    flat = a.flatten(3)  # (B, M, C, L)
    if r.all_dominated:
        coef = flat
    else:
        coef = flat.clamp(min=0) + flat.clamp(max=0) * r.dominated.unsqueeze(1).to(a.dtype)
    out = a.new_zeros((b, m, c, h * w))
    index = r.idx.unsqueeze(1).expand(b, m, *r.idx.shape[1:])
    out.scatter_add_(3, index, coef)
    return out.view(b, m, c, h, w)
