"""Tight upper bounds of single pre-activation elements on their *cone* (receptive field).

A pre-activation element of a convolutional network depends only on the few elements of each
earlier node that lie in its cone (its receptive field, clipped at the image borders). Over the
whole input box, backward linear (CROWN) bounds whose *intermediate* bounds are CROWN bounds too
are much tighter than interval intermediates, but over whole feature maps they are far too
expensive (every unstable neuron of every earlier map is a backward pass). On the cone alone
they are cheap: every node is restricted to the elements that reach the target, each affine
node becomes a small dense matrix, and the bounds of the cone's ReLU inputs are computed by
backward passes on those matrices.

:func:`build_cone` extracts the cone from a :class:`~l0tre.certify.graph.Graph` (affine nodes,
sums and ReLUs; anything else is refused). The dense matrices are read off the operations'
own transposes (``AffineOp.backward``): an input element whose column is exactly zero has no
linear influence, so leaving it out is exact, not an approximation. :func:`cone_upper` bounds
the target elements: interval bounds and CROWN bounds (upper line ``u/(u−l)·(x−l)``, lower line
slope ``1`` if ``u ≥ −l`` else ``0``) of every ReLU input, intersected, then a CROWN pass of the
target. Sound up to floating-point rounding (float64; callers add a margin).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...certify import ops as O
from ...certify.graph import Graph

__all__ = ["Cone", "ConeNode", "build_cone", "cone_upper"]


@dataclass(frozen=True)
class ConeNode:
    """One node restricted to its cone: ``support`` ``(S,)`` flat indices of the node's
    elements that reach the target; ``kind`` ``"input"``, ``"affine"`` or ``"relu"``;
    ``inputs`` graph node indices; per input, ``cols`` ``(S_j',)`` the input's flat indices
    with a non-zero column and ``mats`` ``(S, S_j')`` the linear part on them; ``bias`` ``(S,)``."""

    index: int
    kind: str
    support: Tensor
    inputs: tuple[int, ...]
    cols: tuple[Tensor, ...]
    mats: tuple[Tensor, ...]
    bias: Tensor


@dataclass(frozen=True)
class Cone:
    """The cone of ``elements`` of graph node ``target``: ``nodes`` by graph index (topological
    order), the target's ``support`` is ``elements``."""

    target: int
    nodes: dict[int, ConeNode]

    def key(self) -> bytes:
        """A digest of the cone's matrices and biases: equal digests mean equal subproblems
        (elements whose cones are translates of each other get the same bound)."""
        import hashlib

        h = hashlib.sha256()
        for i in sorted(self.nodes, reverse=True):
            nd = self.nodes[i]
            h.update(nd.kind.encode())
            for m in nd.mats:
                h.update(str(tuple(m.shape)).encode())
                h.update(m.contiguous().numpy().tobytes())
            h.update(nd.bias.contiguous().numpy().tobytes())
        return h.digest()


def _rows_backward(op: O.Op, node_shape: tuple[int, ...], support: Tensor, chunk: int) -> list[Tensor]:
    """``Lᵀ e_s`` for each ``s`` in ``support``: per input ``(S, in_size)``."""
    size = int(torch.tensor(node_shape).prod())
    if isinstance(op, O.AddOp):
        outs = []
        for c, shp in zip(op.coeffs, op.in_shapes, strict=True):
            m = torch.zeros(support.numel(), int(torch.tensor(shp).prod()), dtype=torch.float64)
            m[torch.arange(support.numel()), support] = c
            outs.append(m)
        return outs
    if not isinstance(op, O.AffineOp):
        raise ValueError(f"cone bounds: expected affine, sum or ReLU operations, got {op.describe()}")
    parts = []
    for r0 in range(0, support.numel(), chunk):
        s = support[r0:r0 + chunk]
        a = torch.zeros(s.numel(), size, dtype=torch.float64)
        a[torch.arange(s.numel()), s] = 1.0
        parts.append(op.backward(a.view(-1, *node_shape)).reshape(s.numel(), -1))
    return [torch.cat(parts)]


def build_cone(graph: Graph, target: int, elements: Tensor, chunk: int = 256) -> Cone:
    """The cone of ``elements`` ``(E,)`` (flat indices) of graph node ``target`` (module
    docstring). The graph must be float64 on the CPU."""
    if graph.dtype != torch.float64:
        raise ValueError(f"graph: expected a float64 graph, got {graph.dtype}")
    need: dict[int, Tensor] = {target: torch.unique(elements.cpu().to(torch.int64))}
    nodes: dict[int, ConeNode] = {}
    for i in range(target, -1, -1):
        if i not in need:
            continue
        sup = need.pop(i)
        node = graph.nodes[i]
        if node.op is None:
            nodes[i] = ConeNode(i, "input", sup, (), (), (), torch.zeros(sup.numel(), dtype=torch.float64))
            continue
        if isinstance(node.op, O.ReluOp):
            j = node.inputs[0]
            need[j] = torch.unique(torch.cat([need.get(j, sup.new_zeros(0)), sup]))
            nodes[i] = ConeNode(i, "relu", sup, (j,), (sup,), (), torch.zeros(0, dtype=torch.float64))
            continue
        rows = _rows_backward(node.op, tuple(node.shape), sup, chunk)
        zeros = [torch.zeros(1, *graph.nodes[j].shape, dtype=torch.float64) for j in node.inputs]
        bias = node.op.forward(*zeros).reshape(-1)[sup].to(torch.float64)
        cols, mats = [], []
        for j, m in zip(node.inputs, rows, strict=True):
            c = (m != 0).any(dim=0).nonzero().squeeze(1)
            cols.append(c)
            mats.append(m[:, c].contiguous())
            need[j] = torch.unique(torch.cat([need.get(j, c.new_zeros(0)), c]))
        nodes[i] = ConeNode(i, "affine", sup, tuple(node.inputs), tuple(cols), tuple(mats), bias)
    return Cone(target, nodes)


def _place(support: Tensor, idx: Tensor) -> Tensor:
    """Positions of ``idx`` in the sorted ``support``."""
    return torch.searchsorted(support, idx)


Bounds = dict[int, tuple[Tensor, Tensor]]


def _interval(cone: Cone, lo: float, hi: float, pre: Bounds) -> Bounds:
    """Interval bounds ``(l, u)`` over each node's support, in topological order."""
    out: dict[int, tuple[Tensor, Tensor]] = {}
    for i in sorted(cone.nodes):
        nd = cone.nodes[i]
        if nd.kind == "input":
            out[i] = (torch.full((nd.support.numel(),), lo, dtype=torch.float64),
                      torch.full((nd.support.numel(),), hi, dtype=torch.float64))
        elif nd.kind == "relu":
            j = nd.inputs[0]
            pos = _place(cone.nodes[j].support, nd.support)
            lj, uj = pre.get(j, out[j])
            out[i] = (lj[pos].clamp(min=0), uj[pos].clamp(min=0))
        else:
            low, up = nd.bias.clone(), nd.bias.clone()
            for j, c, m in zip(nd.inputs, nd.cols, nd.mats, strict=True):
                pos = _place(cone.nodes[j].support, c)
                lj, uj = out[j][0][pos], out[j][1][pos]
                mid, rad = (lj + uj) / 2, (uj - lj) / 2
                low, up = low + m @ mid - m.abs() @ rad, up + m @ mid + m.abs() @ rad
            out[i] = (low, up)
        if i in pre:  # a tighter bound of this node is known
            out[i] = (torch.maximum(out[i][0], pre[i][0]), torch.minimum(out[i][1], pre[i][1]))
    return out


def _backward(cone: Cone, start: int, lam: Tensor, lo: float, hi: float,
              pre: dict[int, tuple[Tensor, Tensor]]) -> Tensor:
    """Upper bounds ``(R,)`` of ``lam @ v_start`` (``lam`` ``(R, S_start)``) by one CROWN pass;
    ``pre[j]`` are the bounds of every ReLU input ``j`` over its support."""
    coef: dict[int, Tensor] = {start: lam}
    const = lam.new_zeros(lam.shape[0])
    for i in sorted(cone.nodes, reverse=True):
        if i > start or i not in coef:
            continue
        a = coef.pop(i)
        nd = cone.nodes[i]
        if nd.kind == "input":
            return const + a.clamp(min=0) @ torch.full((a.shape[1],), hi, dtype=a.dtype) \
                + a.clamp(max=0) @ torch.full((a.shape[1],), lo, dtype=a.dtype)
        if nd.kind == "affine":
            const = const + a @ nd.bias
            for j, c, m in zip(nd.inputs, nd.cols, nd.mats, strict=True):
                tgt = coef.setdefault(j, a.new_zeros(a.shape[0], cone.nodes[j].support.numel()))
                tgt[:, _place(cone.nodes[j].support, c)] += a @ m
            continue
        j = nd.inputs[0]
        pos = _place(cone.nodes[j].support, nd.support)
        low, up = pre[j][0][pos], pre[j][1][pos]
        unstable = (low < 0) & (up > 0)
        su = torch.where(up <= 0, 0.0, torch.where(low >= 0, 1.0, up / (up - low).clamp(min=1e-30)))
        bu = torch.where(unstable, -low * su, 0.0)
        sl = torch.where(up <= 0, 0.0, torch.where(low >= 0, 1.0, (up >= -low).to(up.dtype)))
        ap, an = a.clamp(min=0), a.clamp(max=0)
        const = const + ap @ bu
        tgt = coef.setdefault(j, a.new_zeros(a.shape[0], cone.nodes[j].support.numel()))
        tgt[:, pos] += ap * su + an * sl
    raise RuntimeError("the cone does not reach the input node")


def cone_upper(cone: Cone, bounds: tuple[float, float]) -> Tensor:
    """Upper bounds ``(E,)`` of the target elements (in the order of the target's support) over
    the box ``[lo, hi]`` of every input coordinate."""
    return cone_bounds(cone, bounds)[0]


def cone_bounds(cone: Cone, bounds: tuple[float, float]) -> tuple[Tensor, dict[int, tuple[Tensor, Tensor]]]:
    """:func:`cone_upper` and the bounds ``(l, u)`` of every ReLU input over its support."""
    lo, hi = float(bounds[0]), float(bounds[1])
    pre: dict[int, tuple[Tensor, Tensor]] = {}
    relu_inputs = sorted({nd.inputs[0] for nd in cone.nodes.values() if nd.kind == "relu"})
    for j in relu_inputs:
        ibp = _interval(cone, lo, hi, pre)[j]
        n = cone.nodes[j].support.numel()
        eye = torch.eye(n, dtype=torch.float64)
        up = _backward(cone, j, torch.cat([eye, -eye]), lo, hi, pre)
        pre[j] = (torch.maximum(ibp[0], -up[n:]), torch.minimum(ibp[1], up[:n]))
    t = cone.target
    n = cone.nodes[t].support.numel()
    ibp = _interval(cone, lo, hi, pre)[t]
    return torch.minimum(ibp[1], _backward(cone, t, torch.eye(n, dtype=torch.float64), lo, hi, pre)), pre
