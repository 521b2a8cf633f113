"""Progress events and the tqdm bar: honest totals, and a resumed level starts where it stopped.

A level's planned total is its sensitivity pass; the upper-bound search and tightening are
reported as :meth:`~l0tre.engine.ProgressHook.extra` work, which grows the bar's total, so that
at the end of every level the bar stands at ``n == total == Result.level_evaluations[t - 1]``.
"""

from __future__ import annotations

import io
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TypeVar

import torch

import l0tre
import l0tre.api
import l0tre.engine
from l0tre.engine.executor import ShardTask, Task, WorkUnit
from l0tre.progress import TqdmProgress

from .resume_child import OPTIONS, inputs, model

R = TypeVar("R")


class Bar(TqdmProgress):
    """The tqdm bar, written to a string, with its counts recorded at level starts and ends."""

    def __init__(self) -> None:
        super().__init__(file=io.StringIO(), mininterval=0.0)
        self.starts: dict[int, tuple[float, float]] = {}
        self.ends: dict[int, tuple[float, float]] = {}

    def level_start(self, t: int, evaluations: int, inputs: int) -> None:
        super().level_start(t, evaluations, inputs)
        self.starts[t] = (self._bar.n, self._bar.total)

    def resumed(self, done: int) -> None:
        super().resumed(done)
        t = max(self.starts)
        self.starts[t] = (self._bar.n, self._bar.total)

    def snapshot(self, result: l0tre.Result) -> None:
        super().snapshot(result)
        if result.level_complete:
            self.ends[result.t] = (self._bar.n, self._bar.total)


class _StopAfter:
    """Runs units in order; raises KeyboardInterrupt before the ``k``-th unit of level 2."""

    def __init__(self, k: int) -> None:
        self.k, self.count = k, 0

    def map(self, task: Task[R], units: Sequence[WorkUnit]) -> Generator[tuple[WorkUnit, R], None, None]:
        for unit in units:
            if isinstance(task, ShardTask) and task.ctx.t == 2:
                if self.count == self.k:
                    raise KeyboardInterrupt
                self.count += 1
            yield unit, task.run(unit)


def _open_after(t: int) -> torch.Tensor:
    r = l0tre.evaluate(model(), inputs(), **{**OPTIONS, "t_max": t})  # type: ignore[arg-type]
    return (r.lower < r.upper).nonzero().squeeze(1)


def test_bar_ends_every_level_at_its_real_cost() -> None:
    bar = Bar()
    res = l0tre.evaluate(model(), inputs(), progress=bar, **OPTIONS)  # type: ignore[arg-type]
    bar.close()
    assert res.t == 2 and len(res.level_evaluations) == 2
    engine = l0tre.api.prepare(model(), inputs(), **OPTIONS)  # type: ignore[arg-type]
    planned = {1: engine.level_evaluations(1), 2: engine.level_evaluations(2, _open_after(1))}
    for t in (1, 2):
        assert bar.starts[t] == (0, planned[t])
        assert bar.ends[t] == (res.level_evaluations[t - 1], res.level_evaluations[t - 1])
        assert res.level_evaluations[t - 1] > planned[t]  # the upper-bound search costs rows too


def test_resumed_bar_starts_at_the_work_done(tmp_path: Path) -> None:
    full = l0tre.evaluate(model(), inputs(), **OPTIONS)  # type: ignore[arg-type]
    ckpt = tmp_path / "ck.pt"
    engine = l0tre.api.prepare(model(), inputs(), checkpoint=ckpt, executor=_StopAfter(22),
                               **OPTIONS)  # type: ignore[arg-type]
    stopped = l0tre.engine.drive(engine)
    assert stopped.stopped == "interrupted" and stopped.t == 1
    lvl = torch.load(ckpt, weights_only=True)["level"]
    assert lvl["t"] == 2 and lvl["shard"] == 1 and lvl["extra_evaluations"] > 0

    bar = Bar()
    res = l0tre.evaluate(model(), inputs(), checkpoint=ckpt, progress=bar, **OPTIONS)  # type: ignore[arg-type]
    bar.close()
    assert res.level_evaluations == full.level_evaluations
    planned = engine.level_evaluations(2, _open_after(1)) + lvl["extra_evaluations"]
    assert bar.starts[2] == (lvl["evaluations"], planned)
    assert bar.ends[2] == (full.level_evaluations[1], full.level_evaluations[1])
    assert 1 not in bar.starts  # level 1 is not re-run


def test_a_hook_with_advance_only_sees_every_evaluation() -> None:
    """``extra`` defaults to ``advance``: a hook written before ``extra`` existed counts all."""
    seen: list[int] = []

    class Counting(l0tre.engine.ProgressHook):
        def advance(self, evaluations: int) -> None:
            seen.append(evaluations)

    res = l0tre.evaluate(model(), inputs(), progress=Counting(), **OPTIONS)  # type: ignore[arg-type]
    assert sum(seen) == res.evaluations == sum(res.level_evaluations)
