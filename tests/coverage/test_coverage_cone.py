"""Cone bounds (:mod:`l0tre.apps.coverage.cone`, :mod:`.cone_lp`): the cone reproduces the
network exactly, its bounds are sound (never below a value reached by sampling or corners),
tighter than intervals, prove a dead neuron that intervals and whole-graph CROWN with interval
intermediates miss, and never prove a live one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from l0tre.apps.coverage.cone import build_cone, cone_bounds, cone_upper
from l0tre.apps.coverage.cone_lp import lp_upper
from l0tre.apps.coverage.core import proof_graph
from l0tre.apps.coverage.neurons import Neurons
from l0tre.apps.coverage.proofs import ProofSettings, tighten_unreachable
from l0tre.certify.hidden import hidden_bounds
from l0tre.certify.target import resolve
from l0tre.classifier import as_classifier


class _Res(nn.Module):
    """conv → ReLU → conv + skip → ReLU → conv → ReLU → linear on 1×side×side inputs (3×3
    kernels, zero padding)."""

    def __init__(self, seed: int, side: int = 6) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.c1, self.c2 = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
        self.c3 = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2 * side * side, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c2(a) + a)
        return self.fc(torch.relu(self.c3(b)).flatten(1))


def _graph(net: nn.Module, shape: tuple[int, int, int]):  # type: ignore[no-untyped-def]
    return resolve(net.double(), shape, dtype=torch.float64).graph


def _cone_forward(cone, x: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Evaluate the cone's dense matrices on full inputs ``x`` ``(B, n)`` → target ``(B, E)``."""
    vals = {}
    for i in sorted(cone.nodes):
        nd = cone.nodes[i]
        if nd.kind == "input":
            vals[i] = x[:, nd.support]
        elif nd.kind == "relu":
            j = nd.inputs[0]
            vals[i] = vals[j][:, torch.searchsorted(cone.nodes[j].support, nd.support)].clamp(min=0)
        else:
            v = nd.bias.expand(x.shape[0], -1).clone()
            for j, c, m in zip(nd.inputs, nd.cols, nd.mats, strict=True):
                v = v + vals[j][:, torch.searchsorted(cone.nodes[j].support, c)] @ m.T
            vals[i] = v
    return vals[cone.target]


def _pre(graph, target: int, x: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return graph.activations(x, {target})[target].flatten(1)


def _relu_pre_nodes(graph) -> list[int]:  # type: ignore[no-untyped-def]
    return [n.inputs[0] for n in graph.nodes if type(n.op).__name__ == "ReluOp"]


@pytest.mark.parametrize("seed", [0, 1])
def test_cone_reproduces_the_network_and_bounds_are_sound(seed: int) -> None:
    graph = _graph(_Res(seed), (1, 6, 6))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((400, 1, 6, 6), generator=gen, dtype=torch.float64)
    x = torch.cat([x, (x > 0.5).double()])  # corners of the box too
    lo, hi = torch.zeros(1, 1, 6, 6, dtype=torch.float64), torch.ones(1, 1, 6, 6, dtype=torch.float64)
    for target in _relu_pre_nodes(graph):
        ibp = hidden_bounds(graph, lo, hi, [target], intermediate="ibp")[target][1].flatten()
        pre = _pre(graph, target, x)
        for e in [0, 7, 14, 35, pre.shape[1] - 1]:
            cone = build_cone(graph, target, torch.tensor([e]))
            assert torch.allclose(_cone_forward(cone, x.flatten(1))[:, 0], pre[:, e], atol=1e-9)
            u, bnd = cone_bounds(cone, (0.0, 1.0))
            assert float(u[0]) >= float(pre[:, e].max()) - 1e-9  # sound
            assert float(u[0]) <= float(ibp[e]) + 1e-9  # never looser than intervals
            assert lp_upper(cone, (0.0, 1.0), bnd) <= float(u[0]) + 1e-7  # the LP is at least as tight
            assert lp_upper(cone, (0.0, 1.0), bnd) >= float(pre[:, e].max()) - 1e-7


def test_cone_of_a_border_element_is_smaller_than_of_an_inner_one() -> None:
    graph = _graph(_Res(0), (1, 6, 6))
    target = _relu_pre_nodes(graph)[1]  # two 3×3 convs deep: a 5×5 receptive field
    corner, inner = build_cone(graph, target, torch.tensor([0])), build_cone(graph, target, torch.tensor([14]))
    assert corner.nodes[0].support.numel() == 9 and inner.nodes[0].support.numel() == 25  # 3×3 vs 5×5 pixels


class _Cancel(nn.Module):
    """``a = b = relu(x)``; ``p = relu(a − b + 0.1)`` (always 0.1); ``q = relu(p − 0.2)`` (dead:
    −0.1 for every input) and ``r = relu(p − 0.05)`` (live: 0.05). Intervals give ``a − b ∈
    [−1, 1]``, so ``p``'s input looks unstable and ``q`` looks live to intervals and to CROWN
    with interval intermediates; CROWN intermediates on the cone see ``a − b = 0``."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(1, 2, 1), nn.Conv2d(2, 1, 1), nn.Conv2d(1, 2, 1)
        self.fc = nn.Linear(2 * 16, 2)
        with torch.no_grad():
            self.c1.weight[:] = 1.0
            self.c1.bias.zero_()
            self.c2.weight[:] = torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)
            self.c2.bias[:] = 0.1
            self.c3.weight[:] = 1.0
            self.c3.bias[:] = torch.tensor([-0.2, -0.05])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(torch.relu(self.c3(p)).flatten(1))


def test_cone_proves_a_dead_element_that_intervals_and_crown_ibp_miss_and_never_a_live_one() -> None:
    net = _Cancel().double()
    graph = _graph(net, (1, 4, 4))
    target = _relu_pre_nodes(graph)[2]
    lo, hi = torch.zeros(1, 1, 4, 4, dtype=torch.float64), torch.ones(1, 1, 4, 4, dtype=torch.float64)
    ibp = hidden_bounds(graph, lo, hi, [target], intermediate="ibp")[target][1].flatten()
    found = Neurons.discover(graph, "element")
    layer = found.layers[2]
    dead, live = layer.offset + 5, layer.offset + 16 + 5  # channel 0 / 1, pixel (1, 1)
    crown_ibp = tighten_unreachable(proof_graph(as_classifier(net), found), found, torch.tensor([dead, live]), 0.0,
                                    (0.0, 1.0), ProofSettings(intermediate="ibp", exact_time=0.0))
    assert float(ibp[5]) > 0 and not bool(crown_ibp.proven[0])  # the plain proofs fail
    u = cone_upper(build_cone(graph, target, torch.tensor([5, 16 + 5])), (0.0, 1.0))
    assert float(u[0]) <= -0.1 + 1e-9  # proven dead (−0.1 exactly)
    assert float(u[1]) >= 0.05 - 1e-9  # the live one keeps a positive bound


def test_exact_milp_bound_is_the_maximum_on_a_one_pixel_net() -> None:
    """On a net of one input pixel the maximum is found by a dense scan of ``[0, 1]``; the MILP
    bound (exact) must equal it, the LP and CROWN bounds may only be larger."""
    gen = torch.Generator().manual_seed(4)
    net = nn.Sequential(nn.Flatten(), nn.Linear(1, 6), nn.ReLU(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    graph = _graph(net, (1, 1, 1))
    target = _relu_pre_nodes(graph)[1]
    x = torch.linspace(0, 1, 200_001, dtype=torch.float64).view(-1, 1, 1, 1)
    pre = _pre(graph, target, x)
    for e in range(4):
        cone = build_cone(graph, target, torch.tensor([e]))
        u, bnd = cone_bounds(cone, (0.0, 1.0))
        exact = lp_upper(cone, (0.0, 1.0), bnd, exact=True)
        assert exact == pytest.approx(float(pre[:, e].max()), abs=1e-5)
        assert exact <= lp_upper(cone, (0.0, 1.0), bnd) + 1e-7 <= float(u[0]) + 2e-7


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_milp_bound_is_sound_and_tightest_on_a_conv_net(seed: int) -> None:
    graph = _graph(_Res(seed), (1, 6, 6))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((400, 1, 6, 6), generator=gen, dtype=torch.float64)
    x = torch.cat([x, (x > 0.5).double()])
    target = _relu_pre_nodes(graph)[1]
    pre = _pre(graph, target, x)
    for e in [0, 14, 35]:
        cone = build_cone(graph, target, torch.tensor([e]))
        _, bnd = cone_bounds(cone, (0.0, 1.0))
        exact = lp_upper(cone, (0.0, 1.0), bnd, exact=True)
        assert float(pre[:, e].max()) - 1e-6 <= exact <= lp_upper(cone, (0.0, 1.0), bnd) + 1e-6


def test_coverage_reports_the_milp_proven_dead_elements_unreachable_and_never_a_live_one() -> None:
    from l0tre.apps.coverage import coverage

    net = _Cancel()
    seeds = torch.full((2, 1, 4, 4), 0.3, dtype=torch.float64)
    res = coverage(net, seeds, neurons="element", t_max=1, reach=False, bounds=(0.0, 1.0))
    layer = res.layers[2]
    dead = torch.arange(layer.offset, layer.offset + 16)
    live = torch.arange(layer.offset + 16, layer.offset + 32)
    assert bool(res.unreachable[dead].all()) and not bool(res.unreachable[live].any())
    assert res.proof_stats["milp_proven"] == 16  # intervals and CROWN-IBP prove none of them
    assert bool(res.after[live].all())  # the seeds fire the live ones
