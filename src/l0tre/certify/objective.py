"""Hidden-neuron objectives as ordinary certification targets.

Every certification route of this package (one-shot boxes, the L0 level covering of
:func:`~l0tre.certify.level.certify_level`, branch and bound, the counterexample search) proves
that a *label* is kept: all margins ``z_label − z_k`` stay positive. A hidden-neuron question —
"can pre-activation element ``e`` of node ``j`` exceed ``τ``?" — is put in that form by a graph
transformation, not by a second implementation: :func:`neuron_graph` keeps the part of the
model that computes the selected nodes and appends a linear head with ``1 + M`` outputs

    ``o_0 = τ`` (a constant),  ``o_k = v_{j_k}(x)[e_k]`` for ``k = 1 … M``

so that, with label ``0``, margin ``k`` is ``τ − v_{j_k}[e_k]``. A proven label ``0`` over a set
of inputs (margins ``> margin_tol``) means that no selected element exceeds ``τ`` there; a
"counterexample" is an input where one does (a tie ``o_k = τ`` keeps label 0: ``argmax`` takes
the first index, and a neuron fires only when it is *strictly* above ``τ``). The graph's own
float64 forward pass is the re-check (:class:`~l0tre.certify.target.Target` without a module).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from l0tre.certify import ops as O
from l0tre.certify.graph import Graph, Node
from l0tre.certify.target import Target

__all__ = ["neuron_graph", "neuron_target"]


def _check(graph: Graph, selections: Sequence[tuple[int, Tensor]]) -> list[tuple[int, Tensor]]:
    if not selections:
        raise ValueError("selections: expected at least one (node, elements) pair, got none")
    out = []
    for node, elements in selections:
        if not 0 < int(node) < len(graph.nodes):
            raise ValueError(f"selections: expected node indices in [1, {len(graph.nodes)}), got {node}")
        el = torch.as_tensor(elements, dtype=torch.int64).flatten().cpu()
        size = int(torch.tensor(graph.nodes[int(node)].shape).prod())
        if el.numel() == 0 or int(el.min()) < 0 or int(el.max()) >= size:
            raise ValueError(f"selections: node {node} has {size} elements; expected a non-empty list of flat "
                             f"indices in [0, {size}), got {el.tolist()[:8]}")
        out.append((int(node), el))
    return out


def neuron_graph(graph: Graph, selections: Sequence[tuple[int, Tensor]], threshold: float) -> Graph:
    """The graph ``x ↦ (τ, v_{j_1}[e_1], …, v_{j_M}[e_M])`` (module docstring).

    Args:
        graph: the converted model.
        selections: ``(node, elements)`` pairs: a node index and the flat indices ``(m,)`` of its
            per-sample elements to select; outputs follow the order given.
        threshold: ``τ``, the constant output 0.

    Returns:
        A :class:`Graph` with output shape ``(1 + M,)``, ``M`` the number of selected elements; the
        nodes the selections do not depend on are dropped.
    """
    sel = _check(graph, selections)
    keep: set[int] = set()
    for node, _ in sel:
        keep |= graph.ancestors(node)
    order = sorted(keep | {0})
    remap = {old: new for new, old in enumerate(order)}
    nodes = [Node(graph.nodes[i].name, graph.nodes[i].op, tuple(remap[j] for j in graph.nodes[i].inputs),
                  graph.nodes[i].shape) for i in order]
    m = sum(int(el.numel()) for _, el in sel)
    heads: list[int] = []
    row = 1
    for k, (node, el) in enumerate(sel):
        shape = tuple(graph.nodes[node].shape)
        size = int(torch.tensor(shape).prod())
        src = remap[node]
        if len(shape) != 1:
            nodes.append(Node(f"objective_flatten_{k}", O.ReshapeOp((shape,), (size,)), (src,), (size,)))
            src = len(nodes) - 1
        bias = torch.zeros(1 + m, dtype=graph.dtype, device=graph.device)
        if k == 0:
            bias[0] = float(threshold)
        op = O.FunctionOp(_selector(el.to(graph.device), row, 1 + m, bias), (size,), (1 + m,), bias,
                          f"select {el.numel()} of {graph.nodes[node].name}")
        nodes.append(Node(f"objective_select_{k}", op, (src,), (1 + m,)))
        heads.append(len(nodes) - 1)
        row += int(el.numel())
    if len(heads) > 1:
        nodes.append(Node("objective", O.AddOp(tuple(1.0 for _ in heads), (1 + m,)), tuple(heads), (1 + m,)))
    return Graph(nodes, graph.dtype, graph.device)


def _selector(elements: Tensor, row: int, width: int, bias: Tensor) -> Callable[[Tensor], Tensor]:
    """``x ↦ S x + bias`` with ``(S x)[row + i] = x[elements[i]]`` (a 0/1 matrix, kept implicit:
    a dense ``(1 + M, size)`` matrix would need gigabytes for a few channels of a ResNet)."""
    def fn(x: Tensor) -> Tensor:
        out = x.new_zeros((x.shape[0], width))
        out[:, row:row + elements.numel()] = x[:, elements]
        return out + bias.to(x.dtype)
    return fn


def neuron_target(graph: Graph, selections: Sequence[tuple[int, Tensor]], threshold: float,
                  bounds: tuple[float, float]) -> Target:
    """:func:`neuron_graph` as a :class:`Target` (label ``0`` = no selected element exceeds
    ``threshold``) over the pixel range ``bounds``; re-checks run the float graph itself."""
    lo, hi = float(bounds[0]), float(bounds[1])
    if not lo < hi:
        raise ValueError(f"bounds: expected lo < hi, got {bounds}")
    return Target(neuron_graph(graph, selections, threshold), None, None, (lo, hi))
