"""certify.hidden_bounds: sound bounds of hidden nodes (every sampled point inside, exact on
degenerate boxes), and argument errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from l0tre.certify import ops as O
from l0tre.certify.graph import build_graph
from l0tre.certify.hidden import hidden_bounds


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 2 * 2, 6),
                         nn.ReLU(), nn.Linear(6, 3)).double()


@pytest.mark.parametrize("method", ["ibp", "forward", "crown"])
def test_sampled_points_lie_inside(method: str) -> None:
    graph = build_graph(_net(), (2, 6, 6))
    pre = [n.inputs[0] for n in graph.nodes if isinstance(n.op, O.ReluOp)]
    gen = torch.Generator().manual_seed(1)
    centre = torch.rand(3, 2, 6, 6, generator=gen, dtype=torch.float64)
    lo, hi = (centre - 0.3).clamp(0, 1), (centre + 0.3).clamp(0, 1)
    bounds = hidden_bounds(graph, lo, hi, pre, intermediate=method)
    for b in range(3):
        pts = lo[b] + (hi[b] - lo[b]) * torch.rand(500, 2, 6, 6, generator=gen, dtype=torch.float64)
        acts = graph.activations(pts, set(pre))
        for j in pre:
            low, up = bounds[j][0][b], bounds[j][1][b]
            assert bool((acts[j] >= low - 1e-9).all()) and bool((acts[j] <= up + 1e-9).all())


def test_point_box_is_exact_and_ibp_is_loosest() -> None:
    graph = build_graph(_net(), (2, 6, 6))
    pre = [n.inputs[0] for n in graph.nodes if isinstance(n.op, O.ReluOp)]
    x = torch.rand(1, 2, 6, 6, dtype=torch.float64)
    exact = hidden_bounds(graph, x, x, pre)
    acts = graph.activations(x, set(pre))
    for j in pre:
        torch.testing.assert_close(exact[j][0], acts[j])
        torch.testing.assert_close(exact[j][1], acts[j])
    lo, hi = torch.zeros_like(x), torch.ones_like(x)
    ibp, crown = hidden_bounds(graph, lo, hi, pre, intermediate="ibp"), hidden_bounds(graph, lo, hi, pre,
                                                                                      intermediate="crown")
    for j in pre:  # CROWN is intersected with IBP: never looser
        assert bool((crown[j][1] <= ibp[j][1] + 1e-12).all()) and bool((crown[j][0] >= ibp[j][0] - 1e-12).all())


def test_bad_arguments() -> None:
    graph = build_graph(_net(), (2, 6, 6))
    x = torch.zeros(1, 2, 6, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="nodes: expected node indices"):
        hidden_bounds(graph, x, x, [0])
    with pytest.raises(ValueError, match="intermediate"):
        hidden_bounds(graph, x, x, [1], intermediate="auto")
    with pytest.raises(ValueError, match="boxes"):
        hidden_bounds(graph, x + 1, x, [1])
