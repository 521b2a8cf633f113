"""Grid steps and the grid polish (:mod:`l0tre.apps.coverage.polish`): a neuron whose
continuous optimum rounds to a grid point that does not fire is covered by the greedy grid
step; every point returned lies on the grid; grid steps never end below rounding."""

from __future__ import annotations

import torch
from torch import nn

from l0tre.apps.coverage.candidates import Grid
from l0tre.apps.coverage.groups import AscentSettings, ascend, group_scores, snap
from l0tre.apps.coverage.neurons import Neurons
from l0tre.apps.coverage.polish import PolishSettings, greedy_grid
from l0tre.apps.coverage.reach import polish_phase
from l0tre.apps.coverage.search import Search, SearchSettings
from l0tre.certify.target import resolve
from l0tre.engine.grid import colours, grid_values

GRID = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)


def _peak_net() -> nn.Sequential:
    """Dense unit ``u = relu(10·relu(x0 − 0.6) − 12·relu(x0 − 0.7) − 0.1)`` of pixel 0 of a
    1×2×2 input: its pre-activation peaks at ``x0 = 0.7`` (0.9), which rounds to 0.5 (−0.1, off);
    on the grid only ``x0 = 1`` fires it (0.3)."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net[1].weight[:, 0] = 1.0
        net[1].bias[:] = torch.tensor([-0.6, -0.7])
        net[3].weight[0] = torch.tensor([10.0, -12.0])
        net[3].bias[:] = -0.1
        net[5].weight[:, 0] = torch.tensor([1.0, -1.0])
    return net.double()


def _setup() -> tuple[Neurons, Grid, int]:
    neurons = Neurons.discover(resolve(_peak_net(), (1, 2, 2), dtype=torch.float64).graph, "element")
    seeds = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    grid = Grid.build(seeds, colours(grid_values(2, (0.0, 1.0), torch.float64), 1))
    return neurons, grid, neurons.layers[1].offset  # the unit u


def test_greedy_grid_step_fires_what_rounding_misses() -> None:
    neurons, grid, col = _setup()
    target = torch.tensor([[col]])
    z = torch.full((1, 2, 2), 0.7, dtype=torch.float64)  # the continuous optimum
    assert float(group_scores(neurons, z.unsqueeze(0), target)[0][0, 0]) > 0
    rounded = snap(z, GRID)
    assert float(group_scores(neurons, rounded.unsqueeze(0), target)[0][0, 0]) == 0.0  # rounding breaks it
    out, _ = greedy_grid(neurons, grid, col, rounded, 0.0, PolishSettings(candidates=1), None)
    assert torch.equal(snap(out, GRID), out)  # on the grid
    assert float(group_scores(neurons, out.unsqueeze(0), target)[0][0, 0]) > 0
    assert float(out.flatten()[0]) == 1.0


def test_grid_steps_return_grid_points_never_worse_than_rounding() -> None:
    neurons, _, col = _setup()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand((6, 1, 2, 2), generator=gen, dtype=torch.float64)
    targets = torch.full((6, 1), col)
    s = AscentSettings(steps=20, lr=0.1, grid_steps=10)
    cont, _ = ascend(neurons, x0, targets, (0.0, 1.0), 0.0, AscentSettings(steps=20, lr=0.1), None)
    on_grid, n = ascend(neurons, x0, targets, (0.0, 1.0), 0.0, s, None, GRID)
    assert torch.equal(snap(on_grid, GRID), on_grid)
    n_round = (group_scores(neurons, snap(cont, GRID), targets)[0] > 0).sum(1)
    assert bool((n >= n_round).all())


def test_polish_phase_covers_it_with_a_re_checked_test() -> None:
    neurons, grid, col = _setup()
    covered = neurons.values(grid.x)[0][0] > 0
    search = Search(neurons, grid, SearchSettings(0.0, 16, 100), covered.clone(), torch.zeros_like(covered))
    assert not bool(search.covered[col])
    s = PolishSettings(neurons=8, starts=2, ascent=AscentSettings(steps=20, lr=0.1, grid_steps=5), gap=1.0,
                       candidates=1)
    polish_phase(search, s, (0.0, 1.0))
    assert bool(search.covered[col])
    seed, pos, cols = search.tests[int(search.test_of[col])]
    img = grid.x[seed].clone().view(1, -1)
    img[0, list(pos)] = grid.palette[list(cols), 0]
    assert float(neurons.values(img.view(1, 1, 2, 2))[0][0, col]) > 0  # independent re-check
    assert len(pos) == 1  # only pixel 0 matters: the sparse test changes it alone
