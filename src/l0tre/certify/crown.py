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
    walk = _Walk(graph, plan, ctx, a_start)
    walk.acc[start] = a_start
    for i in sorted(graph.ancestors(start), reverse=True):
        a = walk.acc.pop(i, None)
        if a is not None:
            walk.visit(i, a)
    if walk.lin_coef is not None:
        walk.total = walk.total - walk.lin_coef.abs().sum(2)
    return walk.total


class _Walk:
    """The state of one backward walk: coefficients waiting at each node (``acc``), the
    constant collected so far (``total``) and the coefficients on the free input coordinates
    collected from forward-mode substitutions (``lin_coef``)."""

    def __init__(self, graph: Graph, plan: Plan, ctx: BackwardContext, a_start: Tensor) -> None:
        self.graph, self.plan, self.ctx = graph, plan, ctx
        self.b, self.m = a_start.shape[:2]
        self.total = a_start.new_zeros((self.b, self.m))
        self.lin_coef: Tensor | None = None
        self.acc: dict[int, Tensor] = {}

    def push(self, i: int, k: int, a_in: Tensor) -> None:
        """Hand coefficients ``a_in`` to input ``k`` of node ``i`` (un-cropping windows)."""
        j = self.graph.nodes[i].inputs[k]
        box = self.plan.crops[i][k]
        if box is not None:
            shape = self.graph.nodes[j].shape
            g = self.plan.geom[j]
            if self.plan.shift is not None and g is not None:
                a_in, extra = uncrop_shifted(a_in, box, g, self.plan.ref.get(j), (shape[1], shape[2]),
                                             self.plan.shift, self.plan.geom[i] is not None)
            else:
                a_in, extra = uncrop(a_in, box, g, self.plan.ref.get(j), (shape[1], shape[2]))
            if extra is not None:
                self.total = self.total + extra
        _accumulate(self.acc, j, a_in)

    def visit(self, i: int, a: Tensor) -> None:
        """Apply node ``i``'s rule (substitution, input, affine map, sum, relaxation)."""
        ctx, b, m = self.ctx, self.b, self.m
        how = ctx.substitute.get(i)
        if how == "interval":
            lo, hi = ctx.intervals[i]
            self.total = self.total + _dot(a.clamp(min=0), lo) + _dot(a.clamp(max=0), hi)
        elif how == "linear":
            self._linear(ctx.linear[i], a)
        elif (op := self.plan.ops[i]) is None:  # the input
            self.total = self.total + _dot(a, ctx.centre) - _dot(a.abs(), ctx.radius)
        elif isinstance(op, O.AffineOp):
            if b > 1 and a.stride(0) == 0:  # the same rows for every box: compute them once
                flat = a[:1].reshape(m, *op.out_shape)
                self.total = self.total + op.bias_dot(flat).view(1, m)
                self.push(i, 0, op.backward(flat).view(1, m, *op.in_shape).expand(b, m, *op.in_shape))
                return
            flat = a.reshape(b * m, *op.out_shape)
            self.total = self.total + op.bias_dot(flat).view(b, m)
            self.push(i, 0, op.backward(flat).view(b, m, *op.in_shape))
        elif isinstance(op, O.AddOp):
            for k, c in enumerate(op.coeffs):
                self.push(i, k, a if c == 1.0 else a * c)
        elif isinstance(op, O.ReluOp):
            self._relu(i, ctx.relax[i], a)
        elif isinstance(op, O.MaxPoolOp):
            self._pool(i, op, ctx.relax[i], a)
        else:
            raise TypeError(f"no backward rule for {op.describe()}")

    def _linear(self, lin: LinBounds, a: Tensor) -> None:
        """Substitute forward-mode bounds: lower ones for positive, upper for negative rows."""
        b, m = self.b, self.m
        ap, an = a.clamp(min=0), a.clamp(max=0)
        n = lin.lw.shape[1]
        coef = torch.bmm(ap.reshape(b, m, -1), lin.lw.reshape(b, n, -1).transpose(1, 2))
        coef = coef + torch.bmm(an.reshape(b, m, -1), lin.uw.reshape(b, n, -1).transpose(1, 2))
        self.lin_coef = coef if self.lin_coef is None else self.lin_coef + coef
        self.total = self.total + _dot(ap, lin.lb) + _dot(an, lin.ub)

    def _relu(self, i: int, r: ReluRelax | PoolRelax, a: Tensor) -> None:
        assert isinstance(r, ReluRelax)
        if r.any_unstable:
            ap, an = a.clamp(min=0), a.clamp(max=0)
            a_in = ap * r.lower_slope.unsqueeze(1) + an * r.upper_slope.unsqueeze(1)
            self.total = self.total + _dot(an, r.upper_bias)
        else:
            a_in = a * r.lower_slope.unsqueeze(1)
        self.push(i, 0, a_in)

    def _pool(self, i: int, op: O.MaxPoolOp, r: ReluRelax | PoolRelax, a: Tensor) -> None:
        assert isinstance(r, PoolRelax)
        self.push(i, 0, _pool_back(op, a, r))
        if not r.all_dominated:
            an = a.clamp(max=0).flatten(3)
            loose = (~r.dominated).to(a.dtype) * r.umax
            self.total = self.total + (an * loose.unsqueeze(1)).flatten(2).sum(2)


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
