"""The anytime contract on Ray: a killed worker, Ctrl-C, the time budget, ``--resume``.

A worker process killed by its pid mid-run is replaced and its units run again: the run ends
with the in-process results (the same evaluation count: no unit merged twice). A run stopped by
Ctrl-C or its time budget cancels its outstanding units, holds bounds around the truth, and
resumes (with Ray again) to the uninterrupted answer, through the API and through
``l0tre evaluate --ray auto ... --resume``.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

import l0tre
import l0tre.api
from l0tre.cli import main
from l0tre.engine import drive

from ..cli.conftest import Assets, make_assets
from ..engine.oracle import same
from ..engine.test_oracle import random_mlp
from .conftest import import_ray

import_ray()
from l0tre.cluster import RayExecutor  # noqa: E402  (after the skip when Ray is missing)

SHAPE = (1, 3, 3)
RUN: dict[str, object] = {"epsilon": 0.5, "t_max": 9, "batch_size": 4, "keep_sensitivity": True}



def _case() -> tuple[torch.nn.Module, torch.Tensor, l0tre.Result]:
    """bounds 3, 1, 2, 1 (four levels, many units of 4 rows), and the in-process result."""
    model = random_mlp(SHAPE, 3, 6)
    x = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    return model, x, l0tre.evaluate(model, x, **RUN)  # type: ignore[arg-type]


def test_a_killed_worker_is_replaced_and_the_results_are_identical(ex: RayExecutor) -> None:
    model, x, full = _case()
    before = ex.pids()
    assert len(before) == 2 and len(set(before)) == 2
    engine = l0tre.api.prepare(model, x, executor=ex, report_every=1e-9, **RUN)  # type: ignore[arg-type]
    final, killed = None, False
    for snap in engine.run():
        if not killed and snap.t == 1 and not snap.level_complete:
            # inside level 2 (a snapshot after every unit): units are queued on both workers
            os.kill(before[0], signal.SIGKILL)
            killed = True
        final = snap
    assert killed and final is not None
    assert final.stopped in ("converged", "t_max")
    same(full, final)
    after = ex.pids()
    assert after[0] != before[0] and after[1] == before[1]  # the killed one was restarted


def test_ctrl_c_cancels_and_resume_on_ray_matches(ex: RayExecutor, tmp_path: Path) -> None:
    model, x, full = _case()
    truth_lo, truth_hi = full.lower, full.upper
    for k in (2, 9, 25):
        ckpt = tmp_path / f"k{k}.pt"
        seen = []

        def on_snapshot(snap: l0tre.Result, k: int = k, seen: list[int] = seen) -> None:
            seen.append(1)
            if len(seen) == k:
                raise KeyboardInterrupt

        engine = l0tre.api.prepare(model, x, executor=ex, checkpoint=ckpt, report_every=1e-9,  # type: ignore[arg-type]
                                   **RUN)
        res = drive(engine, on_snapshot)
        assert res.stopped == "interrupted", k
        assert bool((res.lower <= truth_lo).all()) and bool((truth_hi <= res.upper).all())
        resumed = l0tre.evaluate(model, x, executor=ex, checkpoint=ckpt, **RUN)  # type: ignore[arg-type]
        same(full, resumed)


def test_time_budget_stops_and_resume_matches(ex: RayExecutor, tmp_path: Path) -> None:
    model, x, full = _case()
    ckpt = tmp_path / "budget.pt"
    for _ in range(3):
        res = l0tre.evaluate(model, x, executor=ex, checkpoint=ckpt, time_budget=1e-9,  # type: ignore[arg-type]
                             report_every=1e-9, **RUN)
        assert res.stopped == "time_budget"
        assert bool((res.lower <= full.lower).all()) and bool((res.upper >= full.upper).all())
    same(full, l0tre.evaluate(model, x, executor=ex, checkpoint=ckpt, **RUN))  # type: ignore[arg-type]


def _bounds(out: Path) -> list[tuple[int, int, int]]:
    rows = json.loads((out / "results.json").read_text())["inputs"]
    return [(r["index"], r["lower"], r["upper"]) for r in rows]


def test_cli_ray_budget_then_resume_equals_the_in_process_run(ex: RayExecutor, tmp_path: Path) -> None:
    """``--ray auto`` joins the running instance (the fixture's); a TorchScript model travels."""
    ex.close()  # its two actors would hold both CPUs of the instance; the next use restarts them
    assets: Assets = make_assets(tmp_path / "assets")
    common = ["--model", str(assets.model), "--data", str(assets.data), "--t-max", "3", "--quiet",
              "--no-report", "--report-every", "1e-6"]
    plain, ray_out = tmp_path / "plain", tmp_path / "ray"
    assert main(["evaluate", *common, "--out", str(plain)]) == 0
    assert main(["evaluate", *common, "--out", str(ray_out), "--ray", "auto", "--ray-workers", "2",
                 "--time-budget", "0.01"]) == 0
    first = json.loads((ray_out / "results.json").read_text())
    assert first["config"]["ray"] == "auto" and first["config"]["ray_workers"] == 2
    assert main(["evaluate", *common, "--out", str(ray_out), "--ray", "auto", "--resume"]) == 0
    assert _bounds(ray_out) == _bounds(plain)
    final = json.loads((ray_out / "results.json").read_text())["global"]
    assert final["evaluations"] == json.loads((plain / "results.json").read_text())["global"]["evaluations"]



def test_study_and_compare_on_ray_equal_the_in_process_runs(ex: RayExecutor) -> None:
    """``study_global`` and ``compare`` run through the engine, so they take ``executor=``."""
    class Counted:
        """``ex``, counting the shards it is given."""

        def __init__(self) -> None:
            self.parallelism, self.shards = ex.parallelism, 0

        def map(self, task, units):  # type: ignore[no-untyped-def]
            self.shards += 1
            yield from ex.map(task, units)

    model, x, _ = _case()
    kw: dict[str, object] = {"epsilon": 0.5, "t_max": 3, "batch_size": 4}
    here = l0tre.study_global(model, x, **kw)  # type: ignore[arg-type]
    counted = Counted()
    there = l0tre.study_global(model, x, executor=counted, **kw)  # type: ignore[arg-type]
    assert counted.shards > 0
    same(here.result, there.result)
    assert [(r.lower.tolist(), r.upper.tolist()) for r in here.levels] == \
        [(r.lower.tolist(), r.upper.tolist()) for r in there.levels]
    other = random_mlp(SHAPE, 3, 7)
    a = l0tre.compare({"a": model, "b": other}, x, **kw)  # type: ignore[arg-type]
    counted = Counted()
    b = l0tre.compare({"a": model, "b": other}, x, executor=counted, **kw)  # type: ignore[arg-type]
    assert counted.shards > 0
    assert a.to_dict()["per_input"] == b.to_dict()["per_input"]


def test_study_and_compare_commands_offer_ray(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--ray-workers`` without ``--ray`` is refused by both commands (the options are wired)."""
    for argv in (["study", "global", "--model", "paper-mnist"], ["compare", "--models", "paper-mnist", "paper-mnist"]):
        code = main([*argv, "--data", "mnist:test", "--limit", "2", "--out", str(tmp_path / argv[0]),
                     "--ray-workers", "2", "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and "--ray-workers" in err and "--ray" in err, err
