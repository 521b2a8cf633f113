"""The reachability phase (after the grid levels) and the snapshots, against the numpy oracle
and the brute force of :mod:`tests.coverage.test_coverage_oracle`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from l0tre.apps.coverage import coverage
from l0tre.apps.coverage.neurons import Neurons
from l0tre.apps.coverage.reach import firing_scores
from l0tre.certify.target import resolve
from tests.coverage.test_coverage_oracle import _brute, _numpy_values, _seeds, _tiny


@pytest.mark.parametrize("kind", ["channel", "element"])
@pytest.mark.parametrize("seed", [11, 15])
def test_reach_tests_are_rechecked_and_never_below_the_minimum(seed: int, kind: str) -> None:
    net, x = _tiny(seed), _seeds()
    best_l0, _, by_seed = _brute(seed, kind)
    res = coverage(net, x, neurons=kind, t_max=1, bounds=(0.0, 1.0))
    vals = _numpy_values(net, res.x.numpy(), kind)
    reach = [r for r in res.levels if r.mode.startswith("reach")]
    assert len(reach) == 1 or not bool((~res.after & ~res.unreachable).any())
    for u in (res.test_of >= 0).nonzero().flatten().tolist():
        k = int(res.test_of[u])
        assert vals[k, u] > 0  # independent re-check of every kept test
        assert best_l0[u] >= 1 and int(res.l0[k]) >= best_l0[u]
        changed = (res.x[k] != x[int(res.seed[k])]).any(dim=0).sum()
        assert int(changed) == int(res.l0[k])
    assert not bool((res.after & ~torch.from_numpy(best_l0 >= 0) & ~torch.from_numpy(by_seed)).any())
    assert not bool(res.after[res.unreachable].any())


def test_reach_covers_what_level_one_cannot() -> None:
    """A neuron whose brute-force minimum needs more than one pixel is left open by ``t_max=1``
    without the phase; with it, found on at least one of these nets."""
    found = 0
    for seed in (11, 15, 16):
        best_l0, _, _ = _brute(seed, "element")
        need = torch.from_numpy(best_l0 >= 2)
        without = coverage(_tiny(seed), _seeds(), neurons="element", t_max=1, reach=False, bounds=(0.0, 1.0))
        assert not bool(without.after[need & ~without.before].any())
        with_ = coverage(_tiny(seed), _seeds(), neurons="element", t_max=1, bounds=(0.0, 1.0))
        found += int((with_.after & need & ~with_.before).sum())
    assert found > 0


def test_firing_scores_gradient_matches_finite_differences() -> None:
    net = _tiny(11)
    x = _seeds()
    graph = resolve(net, (1, 3, 3), dtype=torch.float64).graph
    neurons = Neurons.discover(graph, "channel")
    cols = torch.tensor([0, 1, 2])
    _, s, g = firing_scores(neurons, x, cols, grad=True)
    h = 1e-6
    for r in range(3):
        for i in range(9):
            d = torch.zeros_like(x)
            d.view(3, -1)[r, i] = h
            fd = (firing_scores(neurons, x + d, cols)[1][r] - firing_scores(neurons, x - d, cols)[1][r]) / (2 * h)
            assert abs(float(fd) - float(g.view(3, -1)[r, i])) < 1e-5
    assert np.isfinite(s.numpy()).all()


def test_snapshots_grow_and_end_at_the_result() -> None:
    snaps: list[float] = []
    res = coverage(_tiny(15), _seeds(), neurons="element", t_max=2, bounds=(0.0, 1.0),
                   on_snapshot=lambda r: snaps.append(r.coverage_after))
    assert snaps and snaps == sorted(snaps) and snaps[-1] == res.coverage_after


def test_a_raising_snapshot_stops_with_what_was_found() -> None:
    def stop(_: object) -> None:
        raise KeyboardInterrupt

    res = coverage(_tiny(15), _seeds(), neurons="element", t_max=3, bounds=(0.0, 1.0), on_snapshot=stop)
    assert res.stopped == "interrupted" and len(res.levels) == 1

