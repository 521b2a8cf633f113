"""The batched (group) phase of the reachability search: gradients by finite differences, the
lattice grouping as a partition, column selection of :meth:`Neurons.values`, re-checked tests
against the numpy oracle of :mod:`tests.coverage.test_coverage_oracle`, and batch-size
invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from l0tre.apps.coverage import coverage
from l0tre.apps.coverage.candidates import Grid
from l0tre.apps.coverage.groups import AscentSettings, GroupSettings, ascend, group_scores, lattice_groups
from l0tre.apps.coverage.neurons import Neurons
from l0tre.apps.coverage.reach import group_phase
from l0tre.apps.coverage.search import Search, SearchSettings
from l0tre.certify.target import resolve
from l0tre.engine.grid import colours, grid_values
from tests.coverage.test_coverage_oracle import _numpy_values, _seeds, _tiny


def _conv_net(seed: int) -> nn.Sequential:
    """conv(1→3, 3×3, pad 1) → ReLU → conv(3→2, 3×3, pad 1) → ReLU → flatten → linear → 2 on
    6×6 inputs, biases lowered so that many elements stay off on the seeds."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(72, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        net[0].bias -= 1.0
        net[2].bias -= 1.5
    return net.double()


def _neurons(net: nn.Module, shape: tuple[int, int, int], kind: str) -> Neurons:
    return Neurons.discover(resolve(net, shape, dtype=torch.float64).graph, kind)


def _conv_seeds(n: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    return torch.rand((n, 1, 6, 6), generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["channel", "element"])
def test_values_of_selected_columns_equal_the_full_values(kind: str) -> None:
    neurons = _neurons(_conv_net(1), (1, 6, 6), kind)
    x = _conv_seeds()
    v, s = neurons.values(x)
    cols = torch.randperm(neurons.total, generator=torch.Generator().manual_seed(0))[:17]
    vc, sc = neurons.values(x, cols)
    assert torch.equal(vc, v[:, cols]) and torch.equal(sc, s[:, cols])
    assert neurons.values(x, cols[:0])[0].shape == (4, 0)


@pytest.mark.parametrize("kind", ["channel", "element"])
def test_group_objective_gradient_matches_finite_differences(kind: str) -> None:
    neurons = _neurons(_conv_net(2), (1, 6, 6), kind)
    x = _conv_seeds(3)
    targets = torch.tensor([[0, 5, -1], [neurons.total - 1, -1, -1], [2, 3, 4]]) % neurons.total
    targets[0, 2] = targets[1, 1] = targets[1, 2] = -1
    margin = 10.0  # no clip in play: a smooth objective except at ReLU kinks

    def objective(z: torch.Tensor) -> torch.Tensor:
        _, s, _ = group_scores(neurons, z, targets, margin=margin)
        return torch.where(torch.isfinite(s), s.clamp(max=margin), 0).sum(1)

    _, _, g = group_scores(neurons, x, targets, margin=margin, grad=True)
    h = 1e-6
    for r in range(3):
        for i in range(0, 36, 5):
            d = torch.zeros_like(x)
            d.view(3, -1)[r, i] = h
            fd = (objective(x + d)[r] - objective(x - d)[r]) / (2 * h)
            assert abs(float(fd) - float(g.view(3, -1)[r, i])) < 1e-5


def test_ascent_stays_in_the_box_and_never_loses_firing_targets() -> None:
    neurons = _neurons(_conv_net(4), (1, 6, 6), "element")
    x = _conv_seeds()
    targets = lattice_groups(neurons, torch.arange(neurons.total), 2, 8)[:4]
    v0, _, _ = group_scores(neurons, x, targets)
    z, n_fire = ascend(neurons, x, targets, (0.0, 1.0), 0.0, AscentSettings(steps=20))
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0
    v, _, _ = group_scores(neurons, z, targets)
    assert torch.equal(n_fire, (v > 0).sum(1))
    assert bool((n_fire >= (v0 > 0).sum(1)).all())  # the start is a candidate of the best point


@pytest.mark.parametrize("stride,max_group", [(1, 4), (2, 3), (3, 100)])
def test_lattice_groups_partition_the_open_neurons(stride: int, max_group: int) -> None:
    neurons = _neurons(_conv_net(1), (1, 6, 6), "element")
    cols = torch.randperm(neurons.total, generator=torch.Generator().manual_seed(1))[:50].sort().values
    groups = lattice_groups(neurons, cols, stride, max_group)
    members = groups[groups >= 0]
    assert sorted(members.tolist()) == cols.tolist()  # every open neuron exactly once
    assert groups.shape[1] <= max_group
    for row in groups:
        g = row[row >= 0]
        layer = neurons.layer_of(g)
        assert bool((layer == layer[0]).all())
        spec = neurons.layers[int(layer[0])]
        if len(spec.shape) == 3:
            _, h, w = spec.shape
            local = g - spec.offset
            assert len(set((local // (h * w)).tolist())) == 1  # one channel
            pos = local % (h * w)
            assert len(set(((pos // w) % stride).tolist())) == 1 and len(set(((pos % w) % stride).tolist())) == 1
        else:
            assert g.numel() == 1  # a dense unit is a group of its own


def _group_search(net: nn.Module, x: torch.Tensor, kind: str, rows: int) -> Search:
    neurons = _neurons(net, tuple(x.shape[1:]), kind)
    before = (neurons.values(x)[0] > 0).any(dim=0)
    grid = Grid.build(x, colours(grid_values(2, (0.0, 1.0), x.dtype), x.shape[1]))
    search = Search(neurons, grid, SearchSettings(0.0, 64, 1000), before.clone(), torch.zeros_like(before))
    group_phase(search, GroupSettings(rows=rows, sparse_rows=rows, stride=2, max_group=4,
                                      ascent=AscentSettings(steps=25)), (0.0, 1.0))
    return search


def test_group_phase_is_batch_size_invariant_and_rechecked() -> None:
    net, x = _conv_net(5), _conv_seeds()
    one, many = _group_search(net, x, "element", 1), _group_search(net, x, "element", 64)
    assert one.tests == many.tests and torch.equal(one.test_of, many.test_of)
    assert int(many.covered.sum()) > int((many.neurons.values(x)[0] > 0).any(0).sum())  # it finds some
    for u in (many.test_of >= 0).nonzero().flatten().tolist():  # every test fires its neuron
        seed, pos, col = many.tests[int(many.test_of[u])]
        img = x[seed].clone().view(-1)
        img[list(pos)] = many.grid.palette[list(col), 0]
        with torch.no_grad():  # a plain forward pass of the module, not the traced graph
            a1 = net[1](net[0](img.view(1, 1, 6, 6)))
            a2 = net[3](net[2](a1))
        assert float(torch.cat([a1.flatten(), a2.flatten()])[u]) > 0


@pytest.mark.parametrize("kind", ["channel", "element"])
def test_coverage_with_groups_agrees_with_numpy(kind: str) -> None:
    net, x = _tiny(15), _seeds()
    res = coverage(net, x, neurons=kind, t_max=1, bounds=(0.0, 1.0))
    vals = _numpy_values(net, res.x.numpy(), kind)
    seeds = _numpy_values(net, x.numpy(), kind)
    covered = (seeds > 0).any(0) | ((vals > 0).any(0) if len(vals) else False)
    assert np.array_equal(res.after.numpy(), covered)  # the result's count equals an independent count
    assert res.coverage_after == pytest.approx(covered.mean())
    for u in (res.test_of >= 0).nonzero().flatten().tolist():
        assert vals[int(res.test_of[u]), u] > 0
