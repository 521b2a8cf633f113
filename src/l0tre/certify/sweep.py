"""One forward sweep of bound propagation over a chunk of boxes (used by :mod:`.bounds`).

The sweep visits the graph in topological order and computes, for every node a later pass
needs, interval bounds (always), forward-mode linear bounds (mode ``"forward"``) and the
relaxation of every ReLU / max-pool; in mode ``"crown"`` the inputs of the non-linearities
are tightened by backward CROWN passes. Nodes no pass reads (the affine tail after the last
non-linearity) are skipped. Boxes are held as the window plan says (:mod:`.window`,
:mod:`.perbox`).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from l0tre.certify import ops as O
from l0tre.certify.crown import BackwardContext, backward
from l0tre.certify.forward import LinBounds, affine_with_interval, concretize, input_bounds, propagate
from l0tre.certify.graph import Graph
from l0tre.certify.grouping import free_coordinates
from l0tre.certify.methods import BoundOptions
from l0tre.certify.perbox import crop_input, crop_shifted
from l0tre.certify.relax import PoolRelax, ReluRelax, interval, pool_relax, relu_relax
from l0tre.certify.window import Plan, crop

__all__ = ["Sweep", "cut_nodes", "frontier_nodes", "shape_numel"]


def frontier_nodes(graph: Graph) -> set[int]:
    """ReLU / max-pool nodes reached from the output through affine and add nodes only."""
    out: set[int] = set()
    stack, seen = [graph.output], {graph.output}
    while stack:
        i = stack.pop()
        op = graph.nodes[i].op
        if isinstance(op, (O.ReluOp, O.MaxPoolOp)):
            out.add(i)
            continue
        for j in graph.nodes[i].inputs:
            if j not in seen:
                seen.add(j)
                stack.append(j)
    return out


def cut_nodes(graph: Graph) -> set[int]:
    """Spatial nodes (at least 2-D per sample) read by flat ones: for ``"hybrid"``, the final
    backward pass stops there and uses forward-mode bounds."""
    out: set[int] = set()
    for node in graph.nodes:
        if len(node.shape) == 1:
            out.update(j for j in node.inputs if len(graph.nodes[j].shape) >= 2)
    return out


def _nonlinear_inputs(graph: Graph) -> dict[int, bool]:
    """Inputs of ReLU / max-pool nodes → whether *only* ReLUs consume them."""
    out: dict[int, bool] = {}
    for node in graph.nodes:
        if isinstance(node.op, (O.ReluOp, O.MaxPoolOp)):
            j = node.inputs[0]
            out[j] = out.get(j, True) and isinstance(node.op, O.ReluOp)
    return out


def _needed(graph: Graph, keep: set[int]) -> set[int]:
    """Nodes a sweep must visit: the ReLU / max-pool nodes (their relaxations), the ``keep``
    nodes, and everything these depend on. The rest (the affine tail after the last
    non-linearity, whose bounds the final backward pass never reads) is skipped."""
    targets = set(keep)
    targets.update(i for i, n in enumerate(graph.nodes) if isinstance(n.op, (O.ReluOp, O.MaxPoolOp)))
    out = set(targets)
    for t in targets:
        out.update(graph.ancestors(t))
    return out


def shape_numel(shape: O.Shape) -> int:
    return math.prod(shape)


class Sweep:
    """One forward sweep over a chunk of boxes, collecting what the final pass needs."""

    def __init__(self, graph: Graph, plan: Plan, lo: Tensor, hi: Tensor, opts: BoundOptions,
                 mode: str, use_forward: bool) -> None:
        self.graph, self.plan, self.opts = graph, plan, opts
        self.mode, self.use_forward = mode, use_forward
        g0 = plan.geom[0]
        if g0 is not None and plan.shift is not None:
            lo, hi = crop_input(lo, g0, plan.shift), crop_input(hi, g0, plan.shift)
        elif g0 is not None:
            lo = lo[..., g0.h0:g0.h1, g0.w0:g0.w1]
            hi = hi[..., g0.h0:g0.h1, g0.w0:g0.w1]
        self.lo, self.hi = lo, hi
        self.ctx = BackwardContext(centre=(hi + lo) / 2, radius=(hi - lo) / 2)

    def _read(self, values: dict[int, Tensor], i: int, k: int, ref: bool, pad: bool) -> Tensor:
        """Input ``k`` of node ``i`` cropped as the plan says."""
        j = self.graph.nodes[i].inputs[k]
        box = self.plan.crops[i][k]
        x = values[j]
        if box is None:
            return x
        shape = self.graph.nodes[j].shape
        g = self.plan.geom[j]
        if self.plan.shift is not None and g is not None:
            return crop_shifted(x, g, self.plan.ref.get(j) if ref else None, (shape[1], shape[2]), box,
                                self.plan.pads[i][k] if pad else 0.0, self.plan.shift,
                                self.plan.geom[i] is not None)
        return crop(x, self.plan.geom[j], self.plan.ref.get(j) if ref else None,
                    (shape[1], shape[2]), box, self.plan.pads[i][k] if pad else 0.0)

    def run(self, keep: set[int]) -> BackwardContext:
        graph, ctx, plan = self.graph, self.ctx, self.plan
        lows: dict[int, Tensor] = {0: self.lo}
        highs: dict[int, Tensor] = {0: self.hi}
        lin: dict[int, LinBounds] = {}
        if self.use_forward:
            free, valid = free_coordinates(self.lo, self.hi)
            lin[0] = input_bounds(ctx.centre, ctx.radius, free, valid)
        remaining = [len(c) for c in graph.consumers]
        refine = _nonlinear_inputs(graph) if self.mode == "crown" else {}
        needed = _needed(graph, keep)
        for i, node in enumerate(graph.nodes):
            op = plan.ops[i]
            if op is None or i not in needed:
                continue
            ins = [(self._read(lows, i, k, True, True), self._read(highs, i, k, True, True))
                   for k in range(len(node.inputs))]
            relax: ReluRelax | PoolRelax | None = None
            if isinstance(op, O.ReluOp):
                relax = relu_relax(*ins[0])
            elif isinstance(op, O.MaxPoolOp):
                relax = pool_relax(op, *ins[0])
            if relax is not None:
                ctx.relax[i] = relax
            if self.use_forward:
                lin_ins = [self._read_lin(lin, i, k) for k in range(len(node.inputs))]
                if isinstance(op, O.AffineOp):
                    lin[i], (lo, hi) = affine_with_interval(op, lin_ins[0], *ins[0])
                else:
                    lin[i] = propagate(op, lin_ins, relax)
                    lo, hi = interval(op, ins)
                flo, fhi = concretize(lin[i])
                lo, hi = torch.maximum(lo, flo), torch.minimum(hi, fhi)
            else:
                lo, hi = interval(op, ins)
            if i in refine:
                lo, hi = self._refine(i, lo, hi, relu_only=refine[i])
            lows[i], highs[i] = lo, torch.maximum(hi, lo)
            for j in node.inputs:
                remaining[j] -= 1
                if remaining[j] == 0 and j not in keep:
                    lows.pop(j, None)
                    highs.pop(j, None)
                    lin.pop(j, None)
        ctx.intervals = {j: (lows[j], highs[j]) for j in keep if j in lows}
        ctx.linear = {j: lin[j] for j in keep if j in lin}
        return ctx

    def _read_lin(self, lin: dict[int, LinBounds], i: int, k: int) -> LinBounds:
        j = self.graph.nodes[i].inputs[k]
        if self.plan.crops[i][k] is None:
            return lin[j]
        x = lin[j]
        lw = self._read({j: x.lw}, i, k, ref=False, pad=False)
        lb = self._read({j: x.lb}, i, k, ref=True, pad=False)
        if x.exact:
            return LinBounds(lw, lb, lw, lb)
        uw = self._read({j: x.uw}, i, k, ref=False, pad=False)
        ub = self._read({j: x.ub}, i, k, ref=True, pad=False)
        return LinBounds(lw, lb, uw, ub)

    def _refine(self, i: int, lo: Tensor, hi: Tensor, relu_only: bool) -> tuple[Tensor, Tensor]:
        """Backward CROWN bounds for the neurons of node ``i`` whose bounds matter."""
        b = lo.shape[0]
        need = ((lo < 0) & (hi > 0)) if relu_only else (hi > lo)
        need = need.flatten(1)
        count = int(need.sum(1).max().item())
        if count == 0:
            return lo, hi
        order = torch.sort(need.to(torch.int8), dim=1, descending=True, stable=True).indices
        idx_all, valid_all = order[:, :count], need.gather(1, order[:, :count])
        shape = self.plan.shape(self.graph, i)
        numel = shape_numel(shape)
        biggest = max(shape_numel(self.plan.shape(self.graph, j)) for j in self.graph.ancestors(i))
        per_row = 8 * biggest * lo.element_size() * b
        rows = max(1, min(count, self.opts.max_memory // max(1, 2 * per_row)))
        lo_f, hi_f = lo.flatten(1).clone(), hi.flatten(1).clone()
        ctx = replace(self.ctx, substitute={})
        for r0 in range(0, count, rows):
            idx, valid = idx_all[:, r0:r0 + rows], valid_all[:, r0:r0 + rows]
            r = idx.shape[1]
            a = lo.new_zeros((b, 2 * r, numel))
            sign = valid.to(lo.dtype)
            a[:, :r].scatter_(2, idx.unsqueeze(2), sign.unsqueeze(2))
            a[:, r:].scatter_(2, idx.unsqueeze(2), -sign.unsqueeze(2))
            lb = backward(self.graph, self.plan, i, a.view(b, 2 * r, *shape), ctx)
            cur_lo, cur_hi = lo_f.gather(1, idx), hi_f.gather(1, idx)
            new_lo = torch.where(valid, torch.maximum(cur_lo, lb[:, :r]), cur_lo)
            new_hi = torch.where(valid, torch.minimum(cur_hi, -lb[:, r:]), cur_hi)
            lo_f.scatter_(1, idx, new_lo)
            hi_f.scatter_(1, idx, new_hi)
        return lo_f.view_as(lo), hi_f.view_as(hi)
