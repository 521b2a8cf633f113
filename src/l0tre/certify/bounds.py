"""Bounds of a graph's outputs over batches of input boxes (IBP, forward, CROWN).

The methods and their options are described in :mod:`l0tre.certify.methods`; one forward
sweep (:mod:`l0tre.certify.sweep`) computes what the final pass needs, and the final pass
bounds the specification backwards (:mod:`l0tre.certify.crown`) or by intervals.

All functions take pixel-space boxes ``lo, hi`` ``(B, *input_shape)`` and a specification
``spec`` ``(B, M, K)`` or ``(M, K)`` and return ``(B, M)`` lower bounds of ``spec · f(x)``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from l0tre.certify.crown import backward
from l0tre.certify.graph import Graph
from l0tre.certify.grouping import extent_groups, free_coordinates, spatial_groups
from l0tre.certify.methods import LEVEL_METHODS, METHODS, BoundOptions, auto_method, sweep_mode
from l0tre.certify.perbox import eligible, make_perbox_plan
from l0tre.certify.sweep import Sweep, cut_nodes, frontier_nodes, shape_numel
from l0tre.certify.window import Plan, make_plan

__all__ = ["LEVEL_METHODS", "METHODS", "BoundOptions", "auto_method", "extent_groups", "free_coordinates",
           "lower_bounds", "margin_spec", "spatial_groups"]


def margin_spec(labels: Tensor, num_classes: int) -> Tensor:
    """Rows ``e_label - e_k`` for every ``k``: ``(B,)`` → ``(B, K, K)`` (row ``label`` is 0)."""
    eye = torch.eye(num_classes, dtype=torch.float64, device=labels.device)
    return eye[labels].unsqueeze(1) - eye.unsqueeze(0)


def _per_box_bytes(graph: Graph, plan: Plan, opts: BoundOptions, mode: str, n_free: int,
                   m: int, itemsize: int) -> int:
    numels = [shape_numel(plan.shape(graph, i)) for i in range(len(graph.nodes))]
    total, biggest = sum(numels), max(numels)
    est = total * 6
    if mode == "forward" or opts.method == "forward":
        est += (n_free + 1) * biggest * 8
    if opts.backward_final:
        est += m * biggest * 6
    if mode == "crown":
        est += 32 * biggest  # at least a few rows per refinement pass
    return est * itemsize


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
    mode = sweep_mode(opts, n_free)
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
    frontier = set() if opts.backward_final else frontier_nodes(graph)
    if opts.method == "hybrid" and use_forward:
        frontier = cut_nodes(graph)
    sweep = Sweep(graph, plan, lo, hi, opts, mode, use_forward)
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
