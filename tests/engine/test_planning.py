"""Level planning: shards cover every open input once, respect the size rules, and the
evaluation counts equal an independent count of grid points."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import l0tre
from l0tre.engine.planning import (
    PARALLEL_SHARD_INPUTS,
    SHARD_INPUTS,
    SHARD_POINTS_MAX,
    estimate_guard,
    level_evaluations,
    plan_level,
)

from .test_oracle import random_mlp


def _problem(n_inputs: int, shape: tuple[int, int, int] = (1, 3, 3), seed: int = 0) -> l0tre.engine.Problem:
    x = torch.rand(n_inputs, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return l0tre.api.prepare(random_mlp(shape, 3, seed), x, epsilon=0.5, t_max=2).problem


def _points(problem: l0tre.engine.Problem, i: int, t: int) -> int:
    """Grid points of level t of input i, counted by enumeration."""
    counts = problem.valid_counts[i].tolist()
    return sum(math.prod(counts[f] for f in sub) for sub in itertools.combinations(range(len(counts)), t))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), batch=st.sampled_from([1, 7, 64, 4096, 1 << 16]), t=st.integers(1, 3),
       drop=st.integers(0, 5))
def test_shards_cover_open_inputs_once(n: int, batch: int, t: int, drop: int) -> None:
    problem = _problem(n)
    active = torch.arange(n)[drop:] if drop < n else torch.arange(n)
    lvl = plan_level(problem, t, active, batch, started=3.5)
    flat = sum(lvl.shards, [])
    assert flat == active.tolist()  # every open input once, in order
    assert len(lvl.unit_subsets) == len(lvl.shards) and all(u >= 1 for u in lvl.unit_subsets)
    assert lvl.t == t and lvl.shard == 0 and lvl.next_rank == 0 and lvl.started == 3.5
    limit = max(SHARD_POINTS_MAX, 16 * batch)
    p1 = problem.palette.shape[0]
    for shard, unit in zip(lvl.shards, lvl.unit_subsets, strict=True):
        assert len(shard) <= 256
        pts = [max(_points(problem, i, t), 1) for i in shard]
        if len(shard) > 1:  # a shard only closes beyond its target: without its last input it fits
            target = min(max(16 * batch, SHARD_INPUTS * int(torch.tensor(
                [max(_points(problem, i, t), 1) for i in active.tolist()], dtype=torch.float64).median())), limit)
            assert sum(pts[:-1]) <= target
        assert unit == max(1, 16 * batch // (len(shard) * p1**t))


def test_level_evaluations_equal_an_enumeration() -> None:
    problem = _problem(5)
    for t in (1, 2, 3):
        assert level_evaluations(problem, t) == sum(_points(problem, i, t) for i in range(5))
        assert level_evaluations(problem, t, torch.tensor([1, 3])) == _points(problem, 1, t) + _points(problem, 3, t)


def test_estimate_guard_names_the_level_and_the_option() -> None:
    problem = _problem(4)
    need = level_evaluations(problem, 2)
    estimate_guard(problem, 2, need)  # exactly enough: accepted
    with pytest.raises(ValueError, match=r"max_evaluations: level t=2 needs about"):
        estimate_guard(problem, 2, need - 1)


def test_a_parallel_executor_gets_larger_shards_of_cheap_inputs() -> None:
    """With 2 workers a shard of cheap inputs holds ``PARALLEL_SHARD_INPUTS × 2`` inputs' worth
    of points (the search after its pass is then balanced over many inputs); units stay exact."""
    problem = _problem(300)
    active = torch.arange(300)
    seq = plan_level(problem, 1, active, 8, started=0.0)
    par = plan_level(problem, 1, active, 8, started=0.0, parallelism=2)
    assert sum(par.shards, []) == active.tolist()
    pts = {i: max(_points(problem, i, 1), 1) for i in range(300)}
    median = int(torch.tensor(list(pts.values()), dtype=torch.float64).median())
    target = min(max(16 * 8, PARALLEL_SHARD_INPUTS * 2 * median), SHARD_POINTS_MAX)
    for shard, following in zip(par.shards, par.shards[1:], strict=False):  # closed before the next input
        assert sum(pts[i] for i in shard) <= target < sum(pts[i] for i in shard) + pts[following[0]]
    assert max(map(len, par.shards)) >= 4 * max(map(len, seq.shards))
