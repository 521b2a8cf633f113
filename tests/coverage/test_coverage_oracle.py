"""l0tre.coverage against brute force on a tiny network (numpy oracle, independent of the
traced graph): minimal L0 per neuron, highest activation at that L0, re-checked tests, sound
unreachability, batch-size invariance."""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
import pytest
import torch
from torch import nn

from l0tre.apps.coverage import coverage

GRID = (0.0, 0.5, 1.0)


def _tiny(seed: int) -> nn.Sequential:
    """conv(1→2, 2×2) → ReLU → linear(8→4) → ReLU → linear(4→3) on 3×3 inputs; dense unit 3 is
    dead by construction (zero weights, negative bias)."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        net[0].bias -= 1.5
        net[3].bias -= 2.0
        net[3].weight[3] = 0.0
        net[3].bias[3] = -1.0
    return net.double()


def _numpy_values(net: nn.Sequential, x: np.ndarray, kind: str) -> np.ndarray:
    """Neuron values ``(B, T)`` by plain numpy: conv channels/elements, then dense units."""
    w1, b1 = net[0].weight.detach().numpy(), net[0].bias.detach().numpy()
    w2, b2 = net[3].weight.detach().numpy(), net[3].bias.detach().numpy()
    b = x.shape[0]
    z1 = np.zeros((b, 2, 2, 2))
    for i, j in itertools.product(range(2), range(2)):
        patch = x[:, 0, i:i + 2, j:j + 2].reshape(b, 4)
        z1[:, :, i, j] = patch @ w1.reshape(2, 4).T + b1
    a1 = np.maximum(z1, 0)
    a2 = np.maximum(a1.reshape(b, 8) @ w2.T + b2, 0)
    first = a1.mean(axis=(2, 3)) if kind == "channel" else a1.reshape(b, 8)
    return np.concatenate([first, a2], axis=1)


def _seeds() -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    return torch.tensor(GRID, dtype=torch.float64)[torch.randint(0, 3, (3, 1, 3, 3), generator=gen)]


@cache
def _brute(seed: int, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per neuron: the minimal L0 over all grid perturbations of all seeds (``-1``: never fires),
    the largest value at that L0, and whether any seed fires it."""
    net, seeds = _tiny(seed), _seeds().numpy()
    imgs, l0s = [], []
    for s in seeds:
        flat = s.reshape(9)
        options = [[v for v in GRID] for _ in range(9)]
        combos = np.array(list(itertools.product(*options)))  # (3^9, 9); an original value means "unchanged"
        imgs.append(combos.reshape(-1, 1, 3, 3))
        l0s.append((combos != flat).sum(1))
    vals = _numpy_values(net, np.concatenate(imgs), kind)
    l0 = np.concatenate(l0s)
    fires = vals > 0
    best_l0 = np.where(fires.any(0), np.where(fires, l0[:, None], 99).min(0), -1)
    best_val = np.array([vals[(l0 == best_l0[u]) & fires[:, u], u].max() if best_l0[u] >= 0 else np.nan
                         for u in range(vals.shape[1])])
    by_seed = (_numpy_values(net, seeds, kind) > 0).any(0)
    return best_l0, best_val, by_seed


@pytest.mark.parametrize("kind", ["channel", "element"])
@pytest.mark.parametrize("seed", [11, 15, 16])
def test_exhaustive_search_finds_minimal_l0(seed: int, kind: str) -> None:
    best_l0, best_val, by_seed = _brute(seed, kind)
    net, seeds = _tiny(seed), _seeds()
    res = coverage(net, seeds, neurons=kind, t_max=9, max_evaluations=10**6, batch_size=97)
    assert res.total == best_l0.size
    np.testing.assert_array_equal(res.before.numpy(), by_seed)
    np.testing.assert_array_equal(res.after.numpy(), best_l0 >= 0)
    searched = ~by_seed & (best_l0 >= 0)
    assert searched.any(), "the tiny net must leave reachable neurons to the search"
    vals = _numpy_values(net, res.x.numpy(), kind)
    for u in np.flatnonzero(searched):
        k = int(res.test_of[u])
        assert int(res.l0[k]) == best_l0[u]
        assert vals[k, u] > 0  # the test fires its neuron (independent re-check)
        assert vals[k, u] == pytest.approx(best_val[u], rel=1e-9, abs=1e-12)  # highest value at that L0
    for k in range(res.x.shape[0]):  # tests: pixels changed, seed index, label
        changed = (res.x[k] != seeds[int(res.seed[k])]).flatten().sum()
        assert int(changed) == int(res.l0[k])
        assert int(res.label[k]) == int(net(res.x[k:k + 1]).argmax())


@pytest.mark.parametrize("kind", ["channel", "element"])
def test_dead_neuron_is_unreachable_and_live_ones_never(kind: str) -> None:
    best_l0, _, _ = _brute(11, kind)
    res = coverage(_tiny(11), _seeds(), neurons=kind, t_max=0)
    dead_unit = res.total - 1  # dense unit 3: zero weights, bias -1
    assert bool(res.unreachable[dead_unit])
    assert not res.unreachable[torch.from_numpy(best_l0 >= 0)].any()  # a neuron that fires is never "proven"
    assert res.stopped == "measure_only" and res.x.shape[0] == 0


def test_non_positive_weights_on_non_negative_inputs_are_unreachable() -> None:
    net = _tiny(0)
    with torch.no_grad():
        net[0].weight[1] = -net[0].weight[1].abs()
        net[0].bias[1] = -0.1
    res = coverage(net, _seeds(), neurons="channel", t_max=0)
    assert bool(res.unreachable[1]) and not bool(res.before[1])


def test_batch_size_does_not_change_the_result() -> None:
    seeds = _seeds()
    runs = [coverage(_tiny(16), seeds, neurons="element", t_max=3, batch_size=b, max_evaluations=10**6)
            for b in (3, 13, 4096)]
    for other in runs[1:]:
        torch.testing.assert_close(other.x, runs[0].x, rtol=0, atol=0)
        assert torch.equal(other.seed, runs[0].seed) and torch.equal(other.after, runs[0].after)
        assert torch.equal(other.test_of, runs[0].test_of)


def test_targeted_levels_find_valid_tests() -> None:
    """With a budget too small for exhaustive levels (level 1 guided by gradients, higher levels
    targeted), every test still fires its neurons, and no L0 is below the brute-force minimum."""
    net, seeds = _tiny(16), _seeds()
    res = coverage(net, seeds, neurons="element", t_max=4, max_evaluations=40, batch_size=16)
    assert res.levels[0].mode == "guided" and res.levels[1].mode == "targeted"
    vals = _numpy_values(net, res.x.numpy(), "element")
    for u in (res.test_of >= 0).nonzero().squeeze(1).tolist():
        assert vals[int(res.test_of[u]), u] > 0
    best_l0, _, _ = _brute(16, "element")
    found = res.test_of >= 0
    assert (res.l0[res.test_of[found]].numpy() >= best_l0[found.numpy()]).all()  # never below the minimum
