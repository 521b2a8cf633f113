"""The executor seam (``l0tre.engine.executor``): units may run in any order, anywhere.

Custom executors run the units handed to ``Executor.map`` reversed, shuffled, or stop midway;
the results must be bit-identical to the default in-process executor, every unit must run
exactly once, the units of a shard must tile its rank range ``[0, C(n, t))``, and a run stopped
anywhere (Ctrl-C inside the executor, a closed snapshot iterator, the time budget) must hold
bounds that bracket the brute-force truth and resume to the uninterrupted answer.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Generator, Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

import l0tre
import l0tre.api
import l0tre.engine
from l0tre.engine.executor import InProcessExecutor, ShardTask, WorkUnit
from l0tre.engine.search import SearchResult, SearchTask, search_units
from l0tre.engine.sensitivity import UnitResult

from .oracle import brute_force_dm, same
from .test_oracle import random_cnn, random_mlp

Yield = Generator[tuple[WorkUnit, UnitResult | SearchResult], None, None]


# -- executors ----------------------------------------------------------------------------------
class ReversedExecutor:
    def map(self, task: ShardTask, units: Sequence[WorkUnit]) -> Yield:
        for unit in reversed(list(units)):
            yield unit, task.run(unit)


class ShuffledExecutor:
    def __init__(self, seed: int, parallelism: int = 1) -> None:
        self.rng = random.Random(seed)
        self.parallelism = parallelism  # > 1: shards and searches are cut into more units
        self.split_searches = 0  # searches run as several units

    def map(self, task: ShardTask | SearchTask, units: Sequence[WorkUnit]) -> Yield:
        self.split_searches += isinstance(task, SearchTask) and len(units) > 1
        order = list(units)
        self.rng.shuffle(order)
        for unit in order:
            yield unit, task.run(unit)


class RunAllThenYieldShuffled:
    """Computes every unit first (like a cluster gathering results), then yields them shuffled."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def map(self, task: ShardTask, units: Sequence[WorkUnit]) -> Yield:
        done = [(unit, task.run(unit)) for unit in units]
        self.rng.shuffle(done)
        yield from done


class CountingExecutor:
    """Records every map call and every unit it runs (shuffled order)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.calls: list[tuple[int, tuple[int, ...], list[WorkUnit]]] = []
        self.unit_evals: list[tuple[int, tuple[int, ...], WorkUnit, list[int]]] = []

        self.searches: list[tuple[int, list[WorkUnit]]] = []  # (rows, units) of each search task

    def map(self, task: ShardTask | SearchTask, units: Sequence[WorkUnit]) -> Yield:
        if isinstance(task, SearchTask):
            self.searches.append((task.rows, list(units)))
            yield from ((unit, task.run(unit)) for unit in units)
            return
        inputs = tuple(task.inputs.tolist())
        self.calls.append((task.ctx.t, inputs, list(units)))
        order = list(units)
        self.rng.shuffle(order)
        for unit in order:
            res = task.run(unit)
            self.unit_evals.append((task.ctx.t, inputs, unit, res.evaluations.tolist()))
            yield unit, res


class StopExecutor:
    """Shuffled order; raises KeyboardInterrupt before running its ``k``-th unit (counted over all
    map calls). Records whether each map generator was closed."""

    def __init__(self, k: int, seed: int = 0) -> None:
        self.k, self.ran, self.rng = k, 0, random.Random(seed)
        self.closed = 0

    def map(self, task: ShardTask, units: Sequence[WorkUnit]) -> Yield:
        order = list(units)
        self.rng.shuffle(order)
        try:
            for unit in order:
                if self.ran == self.k:
                    raise KeyboardInterrupt
                self.ran += 1
                yield unit, task.run(unit)
        finally:
            self.closed += 1


# -- helpers ------------------------------------------------------------------------------------
SHAPE = (1, 3, 3)


def _inputs(shape: tuple[int, int, int], n: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


_same = same  # every bound, example, count and map equal (tests/engine/oracle.py)


def _truth(model: nn.Module, x: torch.Tensor, steps: int, features: str = "pixel") -> torch.Tensor:
    return torch.tensor([brute_force_dm(model, xi, steps, features)[0] for xi in x])


def _valid_counts(x: torch.Tensor, steps: int, features: str) -> list[list[int]]:
    """Per input and feature: grid colours that differ from the original value (plain python)."""
    grid = [k / steps for k in range(steps + 1)]
    out = []
    for xi in x.tolist():
        c, h, w = len(xi), len(xi[0]), len(xi[0][0])
        if features == "pixel":
            feats = [tuple(xi[ch][r][q] for ch in range(c)) for r in range(h) for q in range(w)]
        else:
            feats = [(xi[ch][r][q],) for ch in range(c) for r in range(h) for q in range(w)]
        out.append([sum(col != f for col in itertools.product(grid, repeat=len(f))) for f in feats])
    return out


def _level_points(counts: list[int], t: int) -> int:
    return sum(math.prod(counts[f] for f in sub) for sub in itertools.combinations(range(len(counts)), t))


# -- identical results ----------------------------------------------------------------------------
def _out_of_order() -> list[object]:
    return [ReversedExecutor(), ShuffledExecutor(1), RunAllThenYieldShuffled(2), ShuffledExecutor(3, parallelism=3)]


@pytest.mark.parametrize("seed,features,shape,deep", [(11, "pixel", SHAPE, True), (6, "pixel", SHAPE, True),
                                                      (3, "element", (2, 2, 2), False)])
def test_out_of_order_executor_gives_identical_results_up_to_t_n(seed: int, features: str,
                                                                 shape: tuple[int, int, int], deep: bool) -> None:
    model = random_mlp(shape, 3, seed)
    x = _inputs(shape, 4, seed + 10)
    n = shape[1] * shape[2] if features == "pixel" else shape[0] * shape[1] * shape[2]
    kw: dict[str, object] = {"epsilon": 0.5, "t_max": n, "batch_size": 8, "features": features,
                             "keep_sensitivity": True}
    ref = l0tre.evaluate(model, x, executor=InProcessExecutor(), **kw)
    if deep:  # the case reaches levels with many shards and units
        assert int(ref.lower.max()) >= 3
    for ex in _out_of_order():
        other = l0tre.evaluate(model, x, executor=ex, **kw)
        assert other.stopped in ("converged", "t_max")
        _same(ref, other)
        if deep and isinstance(ex, ShuffledExecutor) and ex.parallelism > 1:
            assert ex.split_searches > 0, "the case needs searches of several units"


@pytest.mark.parametrize("incremental", [None, True])
def test_out_of_order_executor_float32_cnn_t2(incremental: bool | None) -> None:
    shape = (2, 4, 4)
    model = random_cnn(shape, 4, 3).float()
    x = _inputs(shape, 3, 5, torch.float32)
    kw: dict[str, object] = {"epsilon": 0.5, "t_max": 2, "batch_size": 64, "incremental": incremental,
                             "keep_sensitivity": True}
    ref = l0tre.evaluate(model, x, **kw)
    assert ref.t == 2 or bool((ref.lower == ref.upper).all())
    for ex in _out_of_order():
        _same(ref, l0tre.evaluate(model, x, executor=ex, **kw))


# -- every unit exactly once -----------------------------------------------------------------------
@pytest.mark.parametrize("features,shape,seed,sel", [("pixel", SHAPE, 11, None), ("element", (2, 2, 2), 3, None),
                                                     ("pixel", SHAPE, 11, [1, 2, 4, 6, 7, 8])])
def test_units_tile_each_shard_exactly_once(features: str, shape: tuple[int, int, int], seed: int,
                                            sel: list[int] | None) -> None:
    model = random_mlp(shape, 3, seed)
    x = _inputs(shape, 5, seed + 10)
    # grid-valued entries: some features have fewer valid colours, so counts differ per input
    x[0, :, 0, :] = 0.5
    x[1, :, :, 1] = 1.0
    n = shape[1] * shape[2] if features == "pixel" else shape[0] * shape[1] * shape[2]
    if sel is not None:  # a restricted space: ranks of subsets of the selection only
        n = len(sel)
    ex = CountingExecutor()
    res = l0tre.evaluate(model, x, epsilon=0.5, t_max=n, batch_size=2, features=features, executor=ex, pixels=sel)
    assert res.n_features == n
    assert res.stopped in ("converged", "t_max")
    assert len(ex.calls) >= 2
    seen: set[tuple[int, tuple[int, ...], int]] = set()
    for t, inputs, units in ex.calls:
        total = math.comb(n, t)
        ranges = sorted((u.r0, u.r1) for u in units)
        assert len({u.shard for u in units}) == 1
        # the units tile [0, C(n, t)) without gap or overlap
        assert ranges[0][0] == 0 and ranges[-1][1] == total
        assert all(r1 > r0 for r0, r1 in ranges)
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        # one map call per shard and level
        key = (t, inputs, units[0].shard)
        assert key not in seen
        seen.add(key)
    assert sum(len(u) for _, _, u in ex.calls) == len(ex.unit_evals)
    assert len({(t, inp, u) for t, inp, u, _ in ex.unit_evals}) == len(ex.unit_evals)
    assert any(len(u) > 1 for _, _, u in ex.calls), "the test needs shards of several units"
    # the evaluations of a shard's units are its grid points, counted here independently
    counts = _valid_counts(x, 2, features)
    if sel is not None:
        counts = [[row[f] for f in sel] for row in counts]
    per_shard: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for t, inputs, _unit, evals in ex.unit_evals:
        acc = per_shard.setdefault((t, inputs), [0] * len(inputs))
        for j, e in enumerate(evals):
            acc[j] += e
    for (t, inputs), evals in per_shard.items():
        assert evals == [_level_points(counts[i], t) for i in inputs], (t, inputs)
    # every level up to the one that closed the last input was run for every still-open input
    assert max(t for t, _, _ in ex.calls) == res.t or res.t == n
    # a sequential executor searches a shard's open inputs in one unit
    assert all(units == [WorkUnit(units[0].shard, 0, rows)] for rows, units in ex.searches)


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 17])
@pytest.mark.parametrize("parallelism", [1, 2, 3, 8])
def test_search_units_tile_the_rows(rows: int, parallelism: int) -> None:
    units = search_units(7, rows, parallelism)
    assert all(u.shard == 7 and u.r1 > u.r0 for u in units)
    assert [u.r0 for u in units[1:]] == [u.r1 for u in units[:-1]]
    assert units[0].r0 == 0 and units[-1].r1 == rows
    assert len(units) == (1 if parallelism == 1 else min(rows, 2 * parallelism))
    sizes = [u.r1 - u.r0 for u in units]
    assert max(sizes) - min(sizes) <= 1  # balanced
    assert search_units(0, 0, parallelism) == []


# -- stopping midway --------------------------------------------------------------------------------
def _full(model: nn.Module, x: torch.Tensor, **kw: object) -> l0tre.Result:
    return l0tre.evaluate(model, x, **kw)  # type: ignore[arg-type]


RUN = {"epsilon": 0.5, "t_max": 9, "batch_size": 4, "keep_sensitivity": True}
OFTEN = {**RUN, "report_every": 1e-9}  # a snapshot and a checkpoint after every unit


def test_keyboard_interrupt_inside_the_executor_brackets_the_truth_and_resumes(tmp_path: Path) -> None:
    model = random_mlp(SHAPE, 3, 11)
    x = _inputs(SHAPE, 4, 21)
    truth = _truth(model, x, 2)
    full = _full(model, x, **RUN)
    assert torch.equal(full.lower, truth) and torch.equal(full.upper, truth)
    counter = CountingExecutor()
    _full(model, x, executor=counter, **RUN)
    n_units = len(counter.unit_evals)
    assert n_units > 20
    for k in (0, 5, n_units // 2, n_units - 1):
        ckpt = tmp_path / f"k{k}.pt"
        ex = StopExecutor(k, seed=k)
        res = _full(model, x, executor=ex, checkpoint=ckpt, **RUN)
        assert res.stopped == "interrupted", k
        assert ex.ran == k and ex.closed >= 1
        assert bool((res.lower <= truth).all()) and bool((truth <= res.upper).all()), (k, res.lower, res.upper)
        with torch.no_grad():
            pred = model(res.adversarial).argmax(1)
        for i in res.found.nonzero().squeeze(1).tolist():
            assert int(pred[i]) != int(res.predicted[i]) and int(pred[i]) == int(res.adversarial_label[i])
            assert int((res.adversarial[i] != x[i]).any(0).sum()) == int(res.upper[i]) + 1
        resumed = _full(model, x, executor=ShuffledExecutor(100 + k), checkpoint=ckpt, **RUN)
        _same(full, resumed)


def test_closing_the_snapshots_midway_resumes_with_an_out_of_order_executor(tmp_path: Path) -> None:
    model = random_mlp(SHAPE, 3, 6)  # bounds 3, 1, 2, 1: four levels, cheaper than seed 11
    x = _inputs(SHAPE, 4, 16)
    full = _full(model, x, **RUN)
    n_snaps = len(list(l0tre.api.prepare(model, x, **OFTEN).run()))  # type: ignore[arg-type]
    assert n_snaps > 20
    mid_level_done = 0
    for stop in (3, n_snaps // 2, n_snaps - 3):
        ckpt = tmp_path / f"s{stop}.pt"
        gen = l0tre.api.prepare(model, x, executor=ReversedExecutor(), checkpoint=ckpt, **OFTEN).run()  # type: ignore[arg-type]
        for i, _ in enumerate(gen):
            if i + 1 >= stop:
                break
        gen.close()
        data = torch.load(ckpt, weights_only=True)
        mid_level_done += bool(data["level"] and data["level"]["done"])
        resumed = _full(model, x, executor=ShuffledExecutor(stop), checkpoint=ckpt, **RUN)
        _same(full, resumed)
    assert mid_level_done >= 2, "the stops should land mid-shard with units done out of order"


def test_time_budget_stops_mid_level_and_resume_matches(tmp_path: Path) -> None:
    model = random_mlp(SHAPE, 3, 6)  # bounds 3, 1, 2, 1: four levels, cheaper than seed 11
    x = _inputs(SHAPE, 4, 16)
    full = _full(model, x, **RUN)
    ckpt = tmp_path / "budget.pt"
    seen_done = 0
    t_before = 0
    for step in range(6):
        ex = StopExecutor(10**9, seed=step)  # never raises: shuffled, counts its units
        res = _full(model, x, executor=ex, checkpoint=ckpt, time_budget=1e-9, **OFTEN)
        assert res.stopped == "time_budget"
        # the budget is checked after every unit: at most one runs, the rest are cancelled
        # (none runs when the stored shard was complete and only its bound update was left)
        assert ex.ran <= 1 and ex.closed == ex.ran
        data = torch.load(ckpt, weights_only=True)
        if data["level"] is None:  # that unit was the level's last: the level counts, no next one starts
            assert res.t == t_before + 1 and res.level_complete
        else:
            assert res.t == t_before
            seen_done += bool(data["level"]["done"])
        t_before = res.t
        assert bool((res.lower <= full.lower).all()) and bool((res.upper >= full.upper).all())
    assert seen_done >= 1, "some stop should leave units done above next_rank"
    resumed = _full(model, x, executor=ReversedExecutor(), checkpoint=ckpt, **RUN)
    assert resumed.stopped in ("converged", "t_max")
    _same(full, resumed)


class FailingExecutor:
    """Shuffled; a worker "dies" (RuntimeError) before the ``k``-th unit."""

    def __init__(self, k: int) -> None:
        self.k, self.ran, self.rng = k, 0, random.Random(k)

    def map(self, task: ShardTask, units: Sequence[WorkUnit]) -> Yield:
        order = list(units)
        self.rng.shuffle(order)
        for unit in order:
            if self.ran == self.k:
                raise RuntimeError("worker lost")
            self.ran += 1
            yield unit, task.run(unit)


def test_a_failing_executor_raises_and_leaves_a_resumable_checkpoint(tmp_path: Path) -> None:
    model = random_mlp(SHAPE, 3, 6)
    x = _inputs(SHAPE, 4, 16)
    full = _full(model, x, **RUN)
    for k in (3, 9):
        ckpt = tmp_path / f"fail{k}.pt"
        with pytest.raises(RuntimeError, match="worker lost"):
            _full(model, x, executor=FailingExecutor(k), checkpoint=ckpt, **RUN)
        assert ckpt.exists()
        _same(full, _full(model, x, executor=ReversedExecutor(), checkpoint=ckpt, **RUN))


# -- parallel executors: enough units per shard ---------------------------------------------------------
class ParallelCountingExecutor(CountingExecutor):
    """A :class:`CountingExecutor` that says it runs ``parallelism`` units at the same time."""

    def __init__(self, parallelism: object) -> None:
        super().__init__(seed=1)
        self.parallelism = parallelism


@pytest.mark.parametrize("workers", [2, 5])
def test_a_parallel_executor_gets_enough_units_and_identical_results(workers: int) -> None:
    from l0tre.engine.planning import UNITS_PER_WORKER

    shape = (2, 4, 4)
    model = random_cnn(shape, 4, 3).float()
    x = _inputs(shape, 3, 5, torch.float32)
    kw: dict[str, object] = {"epsilon": 0.5, "t_max": 2, "batch_size": 256, "keep_sensitivity": True}
    serial = CountingExecutor()
    ref = l0tre.evaluate(model, x, executor=serial, **kw)
    ex = ParallelCountingExecutor(workers)
    _same(ref, l0tre.evaluate(model, x, executor=ex, **kw))
    n = shape[1] * shape[2]
    assert any(len(u) < UNITS_PER_WORKER * workers for _, _, u in serial.calls), "the case needs large units"
    for t, _, units in ex.calls:
        assert len(units) >= min(math.comb(n, t), UNITS_PER_WORKER * workers)


@pytest.mark.parametrize("value", [0, -3, 2.5, "4", None])
def test_a_parallelism_that_is_not_a_positive_int_counts_as_one(value: object) -> None:
    from l0tre.engine.executor import executor_parallelism

    assert executor_parallelism(ParallelCountingExecutor(value)) == 1
    assert executor_parallelism(InProcessExecutor()) == 1
    assert executor_parallelism(ParallelCountingExecutor(3)) == 3
