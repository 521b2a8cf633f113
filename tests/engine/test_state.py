"""Run state (``l0tre.engine.state``): level progress with out-of-order units, checkpoints.

``LevelProgress`` is checked against a plain model of what it must do: the units of a shard are
the rank ranges ``[k·step, min(total, (k+1)·step))``; whatever order they are marked in,
``next_rank`` is the end of the longest finished prefix and ``pending`` is exactly the units not
marked yet. Checkpoints are checked by a round trip of a hand-made state and of a live engine
stopped in the middle of a level, and by refusing files of another run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import l0tre
import l0tre.api
import l0tre.engine
from l0tre.engine.executor import Task, WorkUnit
from l0tre.engine.sensitivity import UnitResult
from l0tre.engine.state import CHECKPOINT_FORMAT, LevelProgress, RunState, load_checkpoint, save_checkpoint
from l0tre.result import Result

from .test_oracle import random_mlp

R = TypeVar("R")


def _units(total: int, step: int) -> list[tuple[int, int]]:
    return [(r0, min(total, r0 + step)) for r0 in range(0, total, step)]


def _prefix_end(marked: set[tuple[int, int]], units: list[tuple[int, int]]) -> int:
    end = 0
    for u in units:
        if u not in marked:
            break
        end = u[1]
    return end


# -- LevelProgress ----------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(data=st.data(), total=st.integers(1, 120), step=st.integers(1, 17))
def test_marking_in_any_order_finishes_the_shard(data: st.DataObject, total: int, step: int) -> None:
    units = _units(total, step)
    order = data.draw(st.permutations(units))
    lvl = LevelProgress(t=2, shards=[[0, 1]], unit_subsets=[step])
    assert lvl.pending(total) == units
    marked: set[tuple[int, int]] = set()
    for r0, r1 in order:
        lvl.mark_done(r0, r1)
        marked.add((r0, r1))
        pending = lvl.pending(total)
        # pending is exactly the units not marked yet, in rank order, never a done one
        assert pending == [u for u in units if u not in marked]
        assert not set(pending) & marked
        assert lvl.next_rank == _prefix_end(marked, units)
        # every range kept in `done` lies above next_rank and is a marked unit
        assert all(r0_ >= lvl.next_rank and (r0_, r1_) in marked for r0_, r1_ in lvl.done)
    assert lvl.next_rank == total
    assert lvl.pending(total) == []
    assert lvl.done == []


@settings(max_examples=60, deadline=None)
@given(data=st.data(), total=st.integers(1, 60), step=st.integers(1, 9))
def test_progress_survives_a_checkpoint_round_trip_at_any_point(data: st.DataObject, total: int,
                                                                step: int) -> None:
    """The checkpoint stores ``asdict(level)`` and rebuilds it with ``LevelProgress(**d)``: the
    rebuilt progress continues exactly like the original one."""
    units = _units(total, step)
    order = data.draw(st.permutations(units))
    cut = data.draw(st.integers(0, len(order)))
    lvl = LevelProgress(t=1, shards=[[3]], unit_subsets=[step])
    for r0, r1 in order[:cut]:
        lvl.mark_done(r0, r1)
    back = LevelProgress(**dataclasses.asdict(lvl))
    assert back.pending(total) == lvl.pending(total)
    assert back.next_rank == lvl.next_rank
    for r0, r1 in order[cut:]:
        back.mark_done(r0, r1)
    assert back.next_rank == total and back.pending(total) == []


def test_next_shard_starts_the_next_shard_with_its_own_unit_size() -> None:
    lvl = LevelProgress(t=1, shards=[[0], [1, 2]], unit_subsets=[4, 3])
    lvl.mark_done(4, 8)
    lvl.acc = {"x": torch.zeros(1)}
    assert lvl.pending(10) == [(0, 4), (8, 10)]
    lvl.next_shard()
    assert (lvl.shard, lvl.next_rank, lvl.acc, lvl.done) == (1, 0, None, [])
    assert lvl.pending(10) == [(0, 3), (3, 6), (6, 9), (9, 10)]


# -- checkpoint files -------------------------------------------------------------------------
def _hand_made_state() -> RunState:
    g = torch.Generator().manual_seed(0)
    result = Result(
        lower=torch.tensor([1, 0, 2]), upper=torch.tensor([3, 4, 2]), found=torch.tensor([True, False, True]),
        adversarial=torch.rand(3, 1, 2, 2, generator=g, dtype=torch.float64),
        adversarial_label=torch.tensor([2, -1, 0]), predicted=torch.tensor([1, 1, 2]), labels=None,
        n_features=4, epsilon=0.5, features="pixel", t=1, evaluations=123, seconds=1.5,
        history=[{"t": 1.0, "seconds": 1.5, "evaluations": 123.0, "lower": 1.0, "upper": 3.0,
                  "level_complete": 1.0}],
        level_seconds=[1.25], sensitivity=torch.rand(3, 2, 2, generator=g, dtype=torch.float64),
    )
    acc = {"inputs": torch.tensor([0, 1]), "conf": torch.rand(2, 4, generator=g),
           "rank": torch.tensor([[0, 2, -1, -1], [1, -1, -1, -1]])}
    level = LevelProgress(t=2, shards=[[0, 1], [2]], unit_subsets=[2, 3], shard=0, next_rank=2, acc=acc,
                          started=0.75, done=[[4, 6]])
    return RunState(result=result, blocked=torch.tensor([False, True, False]), level=level)


def _same_tensors(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            _same_tensors(a[k], b[k])
    else:
        assert a == b


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    state = _hand_made_state()
    path = tmp_path / "ck.pt"
    save_checkpoint(path, "fp-1", state, seconds=7.5)
    back = load_checkpoint(path, "fp-1", None)
    assert back is not None
    for f in dataclasses.fields(Result):
        _same_tensors(getattr(state.result, f.name), getattr(back.result, f.name))
    assert torch.equal(back.blocked, state.blocked)
    assert back.level is not None and state.level is not None
    _same_tensors(dataclasses.asdict(state.level), dataclasses.asdict(back.level))
    assert back.level.pending(8) == state.level.pending(8) == [(2, 4), (6, 8)]
    assert back.seconds_before == 7.5
    # labels given when loading replace the stored ones
    labels = torch.tensor([1, 0, 2])
    with_labels = load_checkpoint(path, "fp-1", labels)
    assert with_labels is not None and torch.equal(with_labels.result.labels, labels)


def test_checkpoint_between_levels_and_absent_files(tmp_path: Path) -> None:
    state = _hand_made_state()
    state.level = None
    path = tmp_path / "between.pt"
    save_checkpoint(path, "fp", state, seconds=1.0)
    back = load_checkpoint(path, "fp", None)
    assert back is not None and back.level is None
    assert load_checkpoint(tmp_path / "absent.pt", "fp", None) is None
    assert load_checkpoint(None, "fp", None) is None
    save_checkpoint(None, "fp", state, seconds=1.0)  # no path: nothing written, no error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["between.pt"]


def test_foreign_or_broken_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, "fp-1", _hand_made_state(), seconds=0.0)
    with pytest.raises(ValueError, match="checkpoint"):
        load_checkpoint(path, "fp-2", None)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="checkpoint"):
        load_checkpoint(junk, "fp-1", None)
    other = tmp_path / "other.pt"
    torch.save({"format": "something/1", "fingerprint": "fp-1"}, other)
    with pytest.raises(ValueError, match="checkpoint"):
        load_checkpoint(other, "fp-1", None)
    torch.save({"format": CHECKPOINT_FORMAT.replace("/1", "/0"), "fingerprint": "fp-1"}, other)
    with pytest.raises(ValueError, match="checkpoint"):
        load_checkpoint(other, "fp-1", None)


# -- checkpoints of a live engine ---------------------------------------------------------------
SHAPE = (1, 3, 3)


def _model(seed: int = 11) -> torch.nn.Module:
    return random_mlp(SHAPE, 3, seed)


def _inputs(seed: int = 21, n: int = 4) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class _StopAfter:
    """Runs units in reverse order and raises KeyboardInterrupt before the ``k``-th unit."""

    def __init__(self, k: int) -> None:
        self.k, self.count = k, 0

    def map(self, task: Task[R], units: Sequence[WorkUnit]) -> Generator[tuple[WorkUnit, R], None, None]:
        for unit in reversed(units):
            if self.count == self.k:
                raise KeyboardInterrupt
            self.count += 1
            yield unit, task.run(unit)


def test_engine_checkpoint_mid_level_holds_the_live_state(tmp_path: Path) -> None:
    ckpt = tmp_path / "mid.pt"
    engine = l0tre.api.prepare(_model(), _inputs(), epsilon=0.5, t_max=4, batch_size=2, report_every=1e3,
                               checkpoint=ckpt, executor=_StopAfter(8))
    res = l0tre.engine.drive(engine)
    assert res.stopped == "interrupted"
    back = load_checkpoint(ckpt, engine.fingerprint, None)
    assert back is not None and back.level is not None and engine.state.level is not None
    live = engine.state
    for name in ("lower", "upper", "found", "adversarial", "adversarial_label", "predicted"):
        assert torch.equal(getattr(back.result, name), getattr(live.result, name)), name
    assert back.result.t == live.result.t and back.result.evaluations == live.result.evaluations
    assert torch.equal(back.blocked, live.blocked)
    _same_tensors(dataclasses.asdict(live.level), dataclasses.asdict(back.level))
    # reversed order: the units done sit above next_rank and are not pending any more
    assert back.level.done, "the stop should land with out-of-order units recorded"
    assert back.level.acc is not None
    merged = UnitResult(**back.level.acc)
    assert int(merged.evaluations.sum()) > 0


def test_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "ck.pt"
    x = _inputs()
    res = l0tre.evaluate(_model(), x, epsilon=0.5, t_max=1, checkpoint=ckpt)
    assert ckpt.exists() and res.t == 1
    others: list[tuple[torch.nn.Module, torch.Tensor, dict[str, object]]] = [
        (_model(12), x, {}),  # another model
        (_model(), _inputs(seed=22), {}),  # other inputs
        (_model(), x[:3], {}),  # fewer inputs
        (_model(), x, {"epsilon": 0.25}),  # another grid
        (_model(), x, {"features": "element"}),  # another feature space
        (_model(), x, {"pixels": [0, 1, 4]}),  # a restricted feature space
    ]
    for model, xx, kw in others:
        with pytest.raises(ValueError, match="checkpoint"):
            l0tre.api.prepare(model, xx, **{"epsilon": 0.5, "t_max": 1, "checkpoint": ckpt, **kw})  # type: ignore[arg-type]
    # the same run is resumed (nothing left to do at t_max = 1)
    again = l0tre.evaluate(_model(), x, epsilon=0.5, t_max=1, checkpoint=ckpt)
    assert torch.equal(again.lower, res.lower) and torch.equal(again.upper, res.upper)
    assert again.evaluations == res.evaluations


def _old_format(path: Path) -> None:
    """Rewrite a checkpoint as written before per-level counts existed."""
    data = torch.load(path, weights_only=True)
    del data["result"]["level_evaluations"]
    if data["level"] is not None:
        del data["level"]["evaluations"], data["level"]["extra_evaluations"]
    torch.save(data, path)


def test_checkpoints_without_per_level_counts_resume_with_them(tmp_path: Path) -> None:
    """Older checkpoints load (fields added later have defaults); their per-level evaluations
    are rebuilt from the history, so a resumed run reports what an uninterrupted one does."""
    x = _inputs()
    full = l0tre.evaluate(_model(), x, epsilon=0.5, t_max=3, batch_size=2)
    assert full.t == 3 and len(full.level_evaluations) == 3
    mid = tmp_path / "mid.pt"  # in the middle of a level
    stopped = l0tre.engine.drive(l0tre.api.prepare(_model(), x, epsilon=0.5, t_max=3, batch_size=2,
                                                   checkpoint=mid, executor=_StopAfter(8)))
    assert stopped.stopped == "interrupted"
    between = tmp_path / "between.pt"  # after a completed level
    l0tre.evaluate(_model(), x, epsilon=0.5, t_max=1, batch_size=2, checkpoint=between)
    for path in (mid, between):
        _old_format(path)
        res = l0tre.evaluate(_model(), x, epsilon=0.5, t_max=3, batch_size=2, checkpoint=path)
        assert torch.equal(res.lower, full.lower) and torch.equal(res.upper, full.upper)
        assert res.level_evaluations == full.level_evaluations, path.name
        assert len(res.level_seconds) == 3
