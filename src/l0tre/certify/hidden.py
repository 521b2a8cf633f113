"""Sound bounds of *hidden* nodes (not the output) over input boxes.

Certification elsewhere bounds the output margins; the coverage application needs the other
end: how large a hidden pre-activation can get anywhere in a box (e.g. the whole input domain),
to prove that a neuron can never fire. One forward sweep (:class:`~l0tre.certify.sweep.Sweep`)
gives the interval bounds of the requested nodes, with the sweep's own tightening (forward-mode
linear bounds or backward CROWN on the inputs of the non-linearities, always intersected with
IBP). Same soundness caveat as the rest of the package: the graph's dtype (float64 by default),
no directed rounding.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from l0tre.certify.graph import Graph
from l0tre.certify.methods import BoundOptions, Intermediate
from l0tre.certify.sweep import Sweep
from l0tre.certify.window import dense_plan

__all__ = ["hidden_bounds"]


def hidden_bounds(graph: Graph, lo: Tensor, hi: Tensor, nodes: Iterable[int], *,
                  intermediate: str = "forward", max_memory: int = 1 << 30) -> dict[int, tuple[Tensor, Tensor]]:
    """Sound interval bounds ``l ≤ v_j(x) ≤ u`` of graph nodes ``j`` for all ``x`` in the boxes.

    Args:
        graph: the converted model (:func:`~l0tre.certify.graph.build_graph`).
        lo, hi: ``(B, *graph.input_shape)`` pixel-space box corners, ``lo ≤ hi``.
        nodes: indices of the nodes to bound (any node but the input).
        intermediate: how the sweep bounds the inputs of ReLU / max-pool nodes: ``"ibp"``,
            ``"forward"`` (linear in the free input coordinates; memory ∝ free coordinates ×
            node size) or ``"crown"`` (backward CROWN per unstable neuron; tightest, slowest).
        max_memory: bytes a CROWN refinement pass may use.

    Returns:
        ``{j: (l, u)}`` with ``l``, ``u`` ``(B, *graph.nodes[j].shape)`` in the graph's dtype.

    Raises:
        ValueError: bad boxes, node indices or ``intermediate``.
    """
    method = Intermediate.parse(intermediate)
    if method is Intermediate.AUTO:
        raise ValueError("intermediate: expected 'ibp', 'forward' or 'crown', got 'auto'")
    keep = set(int(j) for j in nodes)
    bad = [j for j in keep if not 0 < j < len(graph.nodes)]
    if bad:
        raise ValueError(f"nodes: expected node indices in [1, {len(graph.nodes)}), got {sorted(bad)}")
    lo = lo.to(device=graph.device, dtype=graph.dtype)
    hi = hi.to(device=graph.device, dtype=graph.dtype)
    if lo.shape != hi.shape or tuple(lo.shape[1:]) != graph.input_shape:
        raise ValueError(f"boxes: expected lo/hi of shape (B, {graph.input_shape}), got "
                         f"{tuple(lo.shape)} and {tuple(hi.shape)}")
    if bool((lo > hi).any()) or not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("boxes: need finite lo <= hi")
    opts = BoundOptions(method="crown" if method is Intermediate.CROWN else method.value,
                        intermediate=method.value, max_memory=max_memory)
    with torch.no_grad():
        sweep = Sweep(graph, dense_plan(graph), lo, hi, opts, method.value,
                      use_forward=method is Intermediate.FORWARD)
        ctx = sweep.run(keep=keep)
    return {j: ctx.intervals[j] for j in sorted(keep)}
