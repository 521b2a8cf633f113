"""Bounds of a graph's outputs over batches of input boxes (IBP, forward, CROWN).

Methods (``method``) for the final specification:

* ``"ibp"``: interval bound propagation; the specification is folded into the last affine
  layers.
* ``"forward"``: forward-mode linear bounds in the box's free coordinates.
* ``"crown"``: backward linear relaxation (CROWN / DeepPoly) down to the input.
* ``"hybrid"``: ``"crown"`` through the fully connected head only (the nodes with flat
  per-sample shapes); where it reads the convolutional body, forward-mode bounds are
  substituted. Much cheaper on convolutional networks with L0 boxes, slightly looser; the
  same as ``"crown"`` for networks without spatial layers.

Intermediate (pre-activation) bounds (``intermediate``) are always intersected with IBP:
``"ibp"``, ``"forward"``, ``"crown"`` (backward CROWN on every *unstable* neuron, the
tightest and costliest) or ``"auto"`` (``"forward"`` when a box has at most
``forward_max_vars`` free coordinates, else ``"crown"``; ``"ibp"`` for ``method="ibp"``).

All functions take pixel-space boxes ``lo, hi`` ``(B, *input_shape)`` and a specification
``spec`` ``(B, M, K)`` or ``(M, K)`` and return ``(B, M)`` lower bounds of ``spec · f(x)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from l0tre.certify import ops as O
from l0tre.certify.crown import BackwardContext, backward
from l0tre.certify.forward import (
    LinBounds,
    affine_with_interval,
    concretize,
    input_bounds,
    propagate,
)
from l0tre.certify.graph import Graph
from l0tre.certify.perbox import crop_input, crop_shifted, eligible, make_perbox_plan
from l0tre.certify.relax import PoolRelax, ReluRelax, interval, pool_relax, relu_relax
from l0tre.certify.window import Plan, crop, make_plan

__all__ = ["LEVEL_METHODS", "METHODS", "BoundOptions", "auto_method", "extent_groups", "free_coordinates",
           "lower_bounds", "margin_spec", "spatial_groups"]

METHODS = ("ibp", "forward", "crown", "hybrid")
#: what certification (``certify_level``, the engine's ``certify_method``) accepts
LEVEL_METHODS = ("auto", *METHODS)
_INTERMEDIATE = ("auto", "ibp", "forward", "crown")


@dataclass(frozen=True)
class BoundOptions:
    """Settings of the bound computation (see the module docstring)."""

    method: str = "crown"
    intermediate: str = "auto"
    forward_max_vars: int = 64
    max_memory: int = 1 << 30

    @property
    def backward_final(self) -> bool:
        """Whether the final specification is bounded by a backward pass."""
        return self.method in ("crown", "hybrid")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        if self.intermediate not in _INTERMEDIATE:
            raise ValueError(
                f"intermediate: expected one of {_INTERMEDIATE}, got {self.intermediate!r}")
        if self.max_memory <= 0:
            raise ValueError(
                f"max_memory: expected a positive number of bytes, got {self.max_memory}")


def margin_spec(labels: Tensor, num_classes: int) -> Tensor:
    """Rows ``e_label - e_k`` for every ``k``: ``(B,)`` → ``(B, K, K)`` (row ``label`` is 0)."""
    eye = torch.eye(num_classes, dtype=torch.float64, device=labels.device)
    return eye[labels].unsqueeze(1) - eye.unsqueeze(0)


def free_coordinates(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Flat indices ``(B, n)`` of the coordinates with ``lo < hi`` (``n`` = the largest count
    in the batch, at least 1) and a ``(B, n)`` mask of the real entries."""
    mask = (hi > lo).flatten(1)
    n = max(1, int(mask.sum(1).max().item())) if mask.numel() else 1
    order = torch.sort(mask.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :n]
    return order, mask.gather(1, order)


def _frontier(graph: Graph) -> set[int]:
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


def _cut(graph: Graph) -> set[int]:
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


def auto_method(graph: Graph) -> str:
    """``"crown"`` when the fully connected part of ``graph`` has no ReLU / max-pool (its only
    dense layers follow the last non-linearity, as in the paper's sDNN), else ``"hybrid"``.

    Measured: on conv + linear models hybrid is close to forward-mode bounds and CROWN proves
    far more per second (14×14 sDNN, t = 2: 6.0 vs 9.9 s per image; 28×28 sDNN close pixel pairs:
    99.4 % vs 77 % proven at once at 92 vs 118 pairs/s); with a dense hidden layer hybrid is
    as tight for half the price (paper-mnist single pixels: 33.0 % vs 33.4 % at 294 vs 142/s).
    """
    flat_nonlinear = any(isinstance(n.op, (O.ReluOp, O.MaxPoolOp)) and len(n.shape) == 1 for n in graph.nodes)
    return "hybrid" if flat_nonlinear else "crown"


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


def _numel(shape: O.Shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class _Sweep:
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
        numel = _numel(shape)
        biggest = max(_numel(self.plan.shape(self.graph, j)) for j in self.graph.ancestors(i))
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


def _mode(opts: BoundOptions, n_free: int) -> str:
    if opts.intermediate != "auto":
        return opts.intermediate
    if opts.method == "ibp":
        return "ibp"
    if opts.method == "forward":
        return "forward"
    if opts.method == "hybrid":
        return "forward"
    return "forward" if n_free <= opts.forward_max_vars else "crown"


def _per_box_bytes(graph: Graph, plan: Plan, opts: BoundOptions, mode: str, n_free: int,
                   m: int, itemsize: int) -> int:
    numels = [_numel(plan.shape(graph, i)) for i in range(len(graph.nodes))]
    total, biggest = sum(numels), max(numels)
    est = total * 6
    if mode == "forward" or opts.method == "forward":
        est += (n_free + 1) * biggest * 8
    if opts.backward_final:
        est += m * biggest * 6
    if mode == "crown":
        est += 32 * biggest  # at least a few rows per refinement pass
    return est * itemsize


def spatial_groups(lo: Tensor, hi: Tensor, limit: int) -> list[Tensor]:
    """Split the boxes ``(B, C, H, W)`` into groups of at most ``limit`` whose free pixels lie
    in the same square tile (so that a common window stays small)."""
    b = lo.shape[0]
    if lo.dim() != 4 or b <= 1:
        return [torch.arange(b, device=lo.device)]
    free = (hi > lo).any(1)  # (B, H, W)
    h, w = free.shape[1:]
    rows, cols = free.any(2), free.any(1)
    has = rows.any(1)
    ar_h = torch.arange(h, device=lo.device)
    ar_w = torch.arange(w, device=lo.device)
    big = torch.tensor(10 ** 6, device=lo.device)
    r0 = torch.where(rows, ar_h, big).min(1).values
    r1 = torch.where(rows, ar_h, -big).max(1).values
    c0 = torch.where(cols, ar_w, big).min(1).values
    c1 = torch.where(cols, ar_w, -big).max(1).values
    side = int(torch.where(has, torch.maximum(r1 - r0, c1 - c0) + 1, 1).max())
    tile = max(4, 2 * side)
    key = torch.where(has, ((r0 + r1) // 2 // tile) * (w // tile + 2) + (c0 + c1) // 2 // tile,
                      -1)
    order = torch.argsort(key, stable=True)
    keys = key[order]
    groups: list[Tensor] = []
    for k in torch.unique_consecutive(keys):
        members = order[keys == k]
        groups.extend(members[s:s + limit] for s in range(0, len(members), limit))
    return groups


def extent_groups(lo: Tensor, hi: Tensor) -> list[Tensor]:
    """Split the boxes ``(B, C, H, W)`` by the height and width of the hull of their free
    pixels (for per-box windows, whose common size is the largest in a group)."""
    b = lo.shape[0]
    if lo.dim() != 4 or b <= 1:
        return [torch.arange(b, device=lo.device)]
    free = (hi > lo).any(1)  # (B, H, W)
    ext = []
    for m in (free.any(2), free.any(1)):
        n = m.shape[1]
        k = m.to(torch.int8)
        ext.append(torch.where(m.any(1), n - k.flip(1).argmax(1) - k.argmax(1), 0))
    key = ext[0] * (free.shape[2] + 1) + ext[1]
    order = torch.argsort(key, stable=True)
    keys = key[order]
    return [order[keys == k] for k in torch.unique_consecutive(keys)]


def lower_bounds(graph: Graph, lo: Tensor, hi: Tensor, spec: Tensor,
                 opts: BoundOptions | None = None) -> Tensor:
    """Lower bounds ``(B, M)`` of ``spec · f(x)`` over the boxes ``[lo, hi]``.

    Args:
        graph: the converted model.
        lo, hi: ``(B, *graph.input_shape)`` pixel-space box corners, ``lo ≤ hi``.
        spec: ``(B, M, K)`` or ``(M, K)`` rows over the ``K`` outputs.
        opts: :class:`BoundOptions`.
    """
    opts = opts or BoundOptions()
    lo = lo.to(device=graph.device, dtype=graph.dtype)
    hi = hi.to(device=graph.device, dtype=graph.dtype)
    if lo.shape != hi.shape or tuple(lo.shape[1:]) != graph.input_shape:
        raise ValueError(f"boxes: expected lo/hi of shape (B, {graph.input_shape}), got "
                         f"{tuple(lo.shape)} and {tuple(hi.shape)}")
    if bool((lo > hi).any()) or not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("boxes: need finite lo <= hi")
    b = lo.shape[0]
    spec = spec.to(device=graph.device, dtype=graph.dtype)
    if spec.dim() == 2:
        spec = spec.unsqueeze(0).expand(b, *spec.shape)
    if spec.dim() != 3 or spec.shape[0] != b or (spec.shape[2],) != graph.output_shape:
        raise ValueError(f"spec: expected (B, M, {graph.output_shape}) or (M, K), got "
                         f"{tuple(spec.shape)}")
    out = spec.new_zeros((b, spec.shape[1]))
    if b == 0:
        return out
    n_free = int((hi > lo).flatten(1).sum(1).max().item())
    mode = _mode(opts, n_free)
    with torch.no_grad():
        shifted = eligible(graph)  # per-box windows (l0tre.certify.perbox) when they apply
        groups = extent_groups(lo, hi) if shifted else spatial_groups(lo, hi, limit=1 << 16)
        for group in groups:
            g_lo, g_hi = lo[group], hi[group]
            plan = (make_perbox_plan(graph, g_lo, g_hi) if shifted else None) or make_plan(graph, g_lo, g_hi)
            per_box = _per_box_bytes(graph, plan, opts, mode, n_free, spec.shape[1],
                                     lo.element_size())
            chunk = max(1, opts.max_memory // max(1, per_box))
            for s in range(0, len(group), chunk):
                idx = group[s:s + chunk]
                rows = torch.arange(s, min(s + chunk, len(group)), device=lo.device)
                out[idx] = _chunk(graph, plan.rows(rows), lo[idx], hi[idx], spec[idx], opts, mode)
    return out


def _chunk(graph: Graph, plan: Plan, lo: Tensor, hi: Tensor, spec: Tensor, opts: BoundOptions,
           mode: str) -> Tensor:
    use_forward = mode == "forward" or opts.method == "forward"
    frontier = set() if opts.backward_final else _frontier(graph)
    if opts.method == "hybrid" and use_forward:
        frontier = _cut(graph)
    sweep = _Sweep(graph, plan, lo, hi, opts, mode, use_forward)
    ctx = sweep.run(keep=frontier)
    how = "interval" if opts.method == "ibp" else "linear"
    final = replace(ctx, substitute={j: how for j in frontier})
    if plan.geom[graph.output] is not None:
        raise ValueError("the output node must not be windowed")
    if spec.shape[0] > 1 and bool((spec == spec[:1]).all()):
        spec = spec[:1].expand_as(spec)  # shared rows: the affine tail is walked once
    else:
        spec = spec.contiguous()
    return backward(graph, plan, graph.output, spec, final)
