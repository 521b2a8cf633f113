"""kill -9, then a resume: the results *and* the history equal those of an uninterrupted run.

A real subprocess (:mod:`.resume_child`, a model that sleeps on every call) is killed with
SIGKILL at a point read from its checkpoint: just after level t = 1 completed, in the first
shard of level t = 2, and in its second shard (after the first shard's upper-bound search). The
checkpoint is then resumed here with the same model at full speed. Equal means: the same bounds,
examples and evaluations; one level-complete history entry per level with the same numbers
(seconds aside); the same evaluations per level (``level_evaluations``), and the level's seconds
summed over both runs; the progress hook resumes the level at the work already done.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import l0tre
import l0tre.engine

from . import resume_child
from .resume_child import OPTIONS, inputs, model

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")


class Recorder(l0tre.engine.ProgressHook):
    """Records the progress events, per level."""

    def __init__(self) -> None:
        self.starts: dict[int, tuple[int, int, int]] = {}  # t -> (planned, inputs, done)
        self.passed: dict[int, int] = {}
        self.extra_rows: dict[int, int] = {}
        self.t = 0

    def level_start(self, t: int, evaluations: int, inputs: int) -> None:
        self.t = t
        self.starts[t] = (evaluations, inputs, 0)
        self.passed[t] = self.extra_rows[t] = 0

    def resumed(self, done: int) -> None:
        evaluations, inputs, _ = self.starts[self.t]
        self.starts[self.t] = (evaluations, inputs, done)

    def advance(self, evaluations: int) -> None:
        self.passed[self.t] += evaluations

    def extra(self, evaluations: int) -> None:
        self.extra_rows[self.t] += evaluations


@pytest.fixture(scope="module")
def uninterrupted() -> tuple[l0tre.Result, Recorder]:
    hook = Recorder()
    res = l0tre.evaluate(model(), inputs(), progress=hook, **OPTIONS)  # type: ignore[arg-type]
    return res, hook


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError):  # not written yet / being replaced
        return None
    return data if isinstance(data, dict) else None


def _kill_at(ckpt: Path, report_every: float, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Run the child, SIGKILL it as soon as its checkpoint satisfies ``ready``; return the
    checkpoint it left."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "tests.engine.resume_child", str(ckpt), str(report_every)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"the run ended before the kill point (exit {proc.returncode}): "
                            f"{proc.stderr.read().decode() if proc.stderr else ''}")
            data = _read(ckpt)
            if data is not None and ready(data):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        else:
            pytest.fail("the kill point was not reached in 300 s")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    left = _read(ckpt)
    assert left is not None
    return left


def _after_level_1(d: dict[str, Any]) -> bool:
    return d["level"] is None and d["result"]["t"] == 1


def _in_first_shard(d: dict[str, Any]) -> bool:
    lvl = d["level"]
    return lvl is not None and lvl["t"] == 2 and lvl["shard"] == 0 and lvl["next_rank"] > 0


def _in_second_shard(d: dict[str, Any]) -> bool:
    lvl = d["level"]
    return lvl is not None and lvl["t"] == 2 and lvl["shard"] == 1 and lvl["next_rank"] > 0


def _milestones(res: l0tre.Result) -> list[tuple[float, ...]]:
    """The first history entry and the level-complete ones, without their seconds."""
    keep = [res.history[0]] + [h for h in res.history if h["level_complete"]]
    return [(h["t"], h["evaluations"], h["lower"], h["upper"], h["level_complete"]) for h in keep]


def check_history(res: l0tre.Result) -> None:
    """What every history must satisfy, resumed or not."""
    h = res.history
    assert h[0]["t"] == 0 and h[0]["evaluations"] == 0 and not h[0]["level_complete"]
    for a, b in zip(h, h[1:], strict=False):
        assert b["t"] >= a["t"] and b["evaluations"] >= a["evaluations"] and b["seconds"] >= a["seconds"]
    complete = [e for e in h if e["level_complete"]]
    assert [e["t"] for e in complete] == list(range(1, res.t + 1)), "one level-complete entry per level"
    assert len(res.level_seconds) == len(res.level_evaluations) == res.t
    for e in complete:  # a level completes with the evaluations of the levels up to it
        assert e["evaluations"] == sum(res.level_evaluations[: int(e["t"])])
    assert res.evaluations == sum(res.level_evaluations)


@pytest.mark.parametrize("where,report_every,ready", [
    ("after t=1", 1.0, _after_level_1),
    ("t=2 first shard", 0.05, _in_first_shard),
    ("t=2 second shard", 0.05, _in_second_shard),
])
def test_kill_9_then_resume_equals_uninterrupted(
    tmp_path: Path, uninterrupted: tuple[l0tre.Result, Recorder], where: str, report_every: float,
    ready: Callable[[dict[str, Any]], bool],
) -> None:
    full, full_hook = uninterrupted
    check_history(full)
    ckpt = tmp_path / "checkpoint.pt"
    left = _kill_at(ckpt, report_every, ready)
    assert ready(left), f"{where}: the checkpoint moved past the kill point"

    hook = Recorder()
    resumed = l0tre.evaluate(model(), inputs(), checkpoint=ckpt, progress=hook, **OPTIONS)  # type: ignore[arg-type]
    for name in ("lower", "upper", "found", "adversarial", "adversarial_label", "predicted"):
        assert torch.equal(getattr(resumed, name), getattr(full, name)), name
    assert (resumed.t, resumed.stopped, resumed.evaluations) == (full.t, full.stopped, full.evaluations)
    assert resumed.level_evaluations == full.level_evaluations
    check_history(resumed)
    assert _milestones(resumed) == _milestones(full)
    # the history of the killed run is kept, the resumed run's continues it
    assert resumed.history[: len(left["result"]["history"])] == left["result"]["history"]

    lvl = left["level"]
    if lvl is None:  # killed between levels: level 2 starts afresh
        assert hook.starts[2] == full_hook.starts[2]
        return
    # in the middle of level 2: its time and evaluations add up over both runs
    assert resumed.level_seconds[1] >= left["seconds"] - lvl["started"] > 0
    assert resumed.level_seconds[0] == left["result"]["level_seconds"][0]
    planned, n_inputs, done = hook.starts[2]
    assert done == lvl["evaluations"] > 0, "the progress resumes at the work already done"
    assert planned == full_hook.starts[2][0] + lvl["extra_evaluations"]
    assert n_inputs == full_hook.starts[2][1]
    assert done + hook.passed[2] + hook.extra_rows[2] == full.level_evaluations[1]
    if where == "t=2 second shard":
        assert lvl["extra_evaluations"] > 0  # the first shard's upper-bound search is counted


def test_resume_child_options_are_the_reference_ones() -> None:
    """The child and this test run the same problem (else the checkpoint would be refused)."""
    assert resume_child.model(delay=0.5).state_dict().keys() == model().state_dict().keys()
    for a, b in zip(resume_child.model(delay=0.5).state_dict().values(), model().state_dict().values(), strict=True):
        assert torch.equal(a, b)
