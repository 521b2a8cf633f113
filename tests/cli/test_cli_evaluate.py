"""``l0tre evaluate`` end to end (subprocess): output files, --json, --resume, Ctrl-C / SIGTERM."""

from __future__ import annotations

import csv
import itertools
import json
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from l0tre.cli import main

from .conftest import Assets, popen_cli, run_cli

GLOBAL_KEYS = {"lower", "upper", "estimate", "radius", "t", "evaluations", "seconds", "accuracy"}
INPUT_KEYS = {"index", "label", "predicted", "lower", "upper", "lower_kind", "converged", "adversarial_label"}
CONFIG_KEYS = {"model", "data", "epsilon", "t_max", "features", "time_budget", "device", "batch_size", "out",
               "resume", "overwrite", "quiet", "seed", "json", "limit", "indices", "start", "only_correct",
               "data_root", "trust_pickle", "arch", "max_memory", "max_evaluations", "report_every", "l0tre_version"}


@pytest.fixture(scope="module")
def evaluated(assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, dict[str, Any]]:
    """One run on the tiny model: 5 of the 6 inputs (indices 0-2,4,5), t_max 2, --json."""
    out = tmp_path_factory.mktemp("eval") / "run"
    proc = run_cli("evaluate", "--model", assets.model, "--data", assets.data, "--indices", "0-2,4,5",
                   "--t-max", "2", "--epsilon", "0.5", "--out", out, "--json", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    return out, proc, json.loads(proc.stdout)


def test_results_json_schema(evaluated: tuple[Path, Any, dict[str, Any]]) -> None:
    out, _, _ = evaluated
    data = json.loads((out / "results.json").read_text())
    assert {"config", "global", "inputs"} <= set(data)
    assert CONFIG_KEYS <= set(data["config"])
    assert data["config"]["t_max"] == 2 and data["config"]["indices"] == [0, 1, 2, 4, 5]
    assert data["config"]["seed"] == 3
    g = data["global"]
    assert GLOBAL_KEYS <= set(g)
    assert g["t"] == 2 and g["evaluations"] > 0 and g["accuracy"] == pytest.approx(4 / 5)
    rows = data["inputs"]
    # the global numbers from the per-input rows (paper Def. 5: the means, and their centre)
    lower = sum(r["lower"] for r in rows) / len(rows)
    upper = sum(r["upper"] for r in rows) / len(rows)
    assert g["lower"] == pytest.approx(lower) and g["upper"] == pytest.approx(upper)
    assert g["estimate"] == pytest.approx((lower + upper) / 2) and g["radius"] == pytest.approx((upper - lower) / 2)
    assert [r["index"] for r in rows] == [0, 1, 2, 4, 5]  # positions in the source data set
    for r in rows:
        assert INPUT_KEYS <= set(r)
        assert 0 <= r["lower"] <= r["upper"] <= 36
        assert r["lower_kind"] in ("grid", "certified")
        assert r["converged"] == (r["lower"] == r["upper"])
        assert (r["adversarial_label"] is None) == (r["upper"] == 36)
    assert data["stopped"] in ("t_max", "converged")
    assert len(data["history"]) >= 3 and len(data["level_seconds"]) == 2


SELECTED = [0, 1, 2, 4, 5]  # the --indices of the `evaluated` run
GRID = (0.0, 0.5, 1.0)       # --epsilon 0.5 on inputs in [0, 1]


def _model_and_data(assets: Assets) -> tuple[torch.jit.ScriptModule, np.ndarray, np.ndarray]:
    """The tiny model and the source data set, read without l0tre."""
    with np.load(assets.data) as z:
        x, y = z["x"], z["y"]
    with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript as deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(assets.model)).eval(), x, y


def _label(model: torch.jit.ScriptModule, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.asarray(model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).argmax(1).numpy())


def _smallest_grid_flip(model: torch.jit.ScriptModule, x: np.ndarray, t_max: int) -> int | None:
    """Exhaustive search: the fewest pixels (<= t_max) whose change to grid values flips the
    label of ``x`` ``(1, H, W)``, or ``None``."""
    ref = int(_label(model, x[None])[0])
    flat = x.reshape(-1)
    for t in range(1, t_max + 1):
        batch = []
        for pixels in itertools.combinations(range(flat.size), t):
            for values in itertools.product(GRID, repeat=t):
                z = flat.copy()
                z[list(pixels)] = values
                batch.append(z)
        labels = _label(model, np.stack(batch).reshape(-1, *x.shape))
        if (labels != ref).any():
            return t
    return None


def test_json_stdout_matches_file(evaluated: tuple[Path, Any, dict[str, Any]], assets: Assets) -> None:
    """stdout is results.json; its global numbers follow from per_input.csv, and the labels in
    both from the model run on the source data."""
    out, proc, printed = evaluated
    assert "global L0 radius" in proc.stderr and "global L0 radius" not in proc.stdout  # summary on stderr
    assert printed == json.loads((out / "results.json").read_text())
    with (out / "per_input.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    lower = np.array([int(r["lower"]) for r in rows], dtype=float)
    upper = np.array([int(r["upper"]) for r in rows], dtype=float)
    g = printed["global"]
    assert g["inputs"] == len(rows) == len(SELECTED)
    assert g["lower"] == pytest.approx(lower.mean()) and g["upper"] == pytest.approx(upper.mean())
    assert g["estimate"] == pytest.approx((lower.mean() + upper.mean()) / 2)
    assert g["radius"] == pytest.approx((upper.mean() - lower.mean()) / 2)
    assert g["converged"] == int((lower == upper).sum())
    model, x, y = _model_and_data(assets)
    predicted = _label(model, x[SELECTED])
    assert [int(r["predicted"]) for r in rows] == predicted.tolist()
    assert [int(r["label"]) for r in rows] == y[SELECTED].tolist()
    assert g["accuracy"] == pytest.approx(float((predicted == y[SELECTED]).mean()))


def test_bounds_match_exhaustive_search(evaluated: tuple[Path, Any, dict[str, Any]], assets: Assets) -> None:
    """Each input's bounds against a brute-force search over all grid perturbations of <= 2
    pixels, and each adversarial example re-checked on the model."""
    out, _, data = evaluated
    model, x, _ = _model_and_data(assets)
    for r in data["inputs"]:
        k = _smallest_grid_flip(model, x[r["index"]], 2)
        if k is None:  # levels 1 and 2 hold: lower is 2, nothing smaller can be an upper bound
            assert r["lower"] == 2 and r["upper"] >= 2, r
        else:  # the smallest flip has k pixels: the largest safe radius is k - 1, exactly
            assert r["lower"] == r["upper"] == k - 1, r
    with np.load(out / "adversarial.npz") as z:
        by_index = {int(i): j for j, i in enumerate(z["index"])}
        for r in data["inputs"]:
            if r["adversarial_label"] is None:
                assert r["index"] not in by_index
                continue
            j = by_index[r["index"]]
            x_adv, orig = z["x_adv"][j], x[r["index"]]
            assert np.array_equal(z["x"][j], orig)
            changed = x_adv != orig
            assert int(changed.any(0).sum()) == r["upper"] + 1
            assert set(np.unique(x_adv[changed]).tolist()) <= set(GRID)
            label = int(_label(model, x_adv[None])[0])
            assert label == r["adversarial_label"] != r["predicted"]


def test_adversarial_npz_and_csv(evaluated: tuple[Path, Any, dict[str, Any]]) -> None:
    out, _, data = evaluated
    with np.load(out / "adversarial.npz") as z:
        assert z["index"].dtype == np.int64 and z["x_adv"].dtype == np.float32
        found = [r for r in data["inputs"] if r["adversarial_label"] is not None]
        assert z["x_adv"].shape == (len(found), 1, 6, 6) and z["x"].shape == z["x_adv"].shape
        assert z["index"].tolist() == [r["index"] for r in found]
        assert z["adversarial_label"].tolist() == [r["adversarial_label"] for r in found]
        changed = (z["x_adv"] != z["x"]).any(1).reshape(len(found), -1).sum(1)
        assert changed.tolist() == [r["upper"] + 1 for r in found] == z["l0"].tolist()
    with (out / "per_input.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["index"]) for r in rows] == [0, 1, 2, 4, 5]
    assert [int(r["upper"]) for r in rows] == [r["upper"] for r in data["inputs"]]
    assert (out / "result.pt").is_file() and (out / "checkpoint.pt").is_file()


def test_report_written_by_evaluate(evaluated: tuple[Path, Any, dict[str, Any]]) -> None:
    out, _, _ = evaluated
    for name in ("convergence.png", "per_input.png", "level_time.png", "adversarial.png", "index.html"):
        assert (out / name).stat().st_size > 500, name
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def _bounds(data: dict[str, Any]) -> list[tuple[int, int]]:
    return [(r["lower"], r["upper"]) for r in data["inputs"]]


def test_resume_equals_uninterrupted(assets: Assets, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--model", str(assets.model), "--data", str(assets.data), "--t-max", "2", "--batch-size", "8",
              "--quiet", "--no-report", "--json"]
    assert main(["evaluate", *common, "--out", str(tmp_path / "full")]) == 0  # the reference, in-process
    ref = json.loads(capsys.readouterr().out)
    first = run_cli("evaluate", *common, "--out", tmp_path / "part", "--time-budget", "0.01s")
    assert first.returncode == 0, first.stderr
    part = json.loads(first.stdout)
    assert part["stopped"] == "time_budget" and part["global"]["t"] == 0  # stopped after one work unit
    second = run_cli("evaluate", *common, "--out", tmp_path / "part", "--resume")
    assert second.returncode == 0, second.stderr
    done = json.loads(second.stdout)
    assert done["stopped"] == ref["stopped"] and done["global"]["t"] == 2
    assert _bounds(done) == _bounds(ref)
    assert done["global"]["lower"] == ref["global"]["lower"] and done["global"]["upper"] == ref["global"]["upper"]


def test_rerun_with_overwrite_starts_over(assets: Assets, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["evaluate", "--model", str(assets.model), "--data", str(assets.data), "--limit", "2", "--quiet",
              "--no-report", "--json", "--t-max", "1", "--out", str(tmp_path)]
    assert main(common) == 0
    capsys.readouterr()
    # a different epsilon would refuse the old checkpoint; with --overwrite it is replaced
    assert main([*common, "--epsilon", "0.25", "--overwrite"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["epsilon"] == 0.25 and data["config"]["overwrite"] is True


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_with_bounds(assets: Assets, tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "run"
    proc = popen_cli("evaluate", "--model", assets.steady, "--data", assets.data, "--t-max", "4",
                     "--report-every", "0.5", "--out", out, "--no-report")
    try:
        deadline = time.monotonic() + 60
        while not (out / "results.json").exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no results.json within 60 s"
            time.sleep(0.1)
        time.sleep(1.0)
        assert proc.poll() is None, "the run ended before the signal (workload too small)"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stderr and "global L0 radius" in stdout
    data = json.loads((out / "results.json").read_text())
    assert data["stopped"] == "interrupted"
    assert data["global"]["upper"] == 36 and data["global"]["lower"] >= 0
    assert (out / "checkpoint.pt").is_file()


def test_uint8_notice_and_quiet(assets: Assets, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["evaluate", "--model", str(assets.model), "--data", str(assets.data_uint8), "--t-max", "1",
            "--limit", "2", "--no-report", "--out", str(tmp_path)]
    assert main(args) == 0
    assert "uint8 input scaled by 1/255" in capsys.readouterr().err
    assert main([*args, "--quiet", "--overwrite"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == "" and "global L0 radius" in captured.out


def test_only_correct_and_limit(assets: Assets, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # input 5 has a wrong label: --only-correct keeps 0..4, --limit counts the kept ones
    assert main(["evaluate", "--model", str(assets.model), "--data", str(assets.data), "--only-correct",
                 "--limit", "3", "--t-max", "1", "--quiet", "--no-report", "--json", "--out", str(tmp_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["index"] for r in data["inputs"]] == [0, 1, 2]
    assert data["global"]["accuracy"] == 1.0


def test_interrupt_while_writing_gets_a_final_snapshot(assets: Assets) -> None:
    """Ctrl-C landing in the output writer (outside the engine) still ends with an
    ``interrupted`` snapshot, written once more."""
    import l0tre
    from l0tre.api import prepare
    from l0tre.engine import drive

    model = l0tre.load_model(str(assets.model))
    data = l0tre.load_data(str(assets.data))
    engine = prepare(model, data.x, t_max=2, batch_size=8)
    seen: list[str] = []

    def on_snapshot(snap: l0tre.Result) -> None:
        seen.append(snap.stopped)
        if len(seen) == 2:
            raise KeyboardInterrupt

    final = drive(engine, on_snapshot)
    assert final.stopped == "interrupted"
    assert seen[-1] == "interrupted" and len(seen) == 3
    assert final.lower.shape == (6,) and bool((final.lower <= final.upper).all())


@pytest.mark.parametrize("flag", ["--certify", "--certify-only", "--certify --certify-method crown"])
def test_certify_flags_write_certified_lower(assets: Assets, tmp_path: Path, flag: str) -> None:
    from .conftest import TinyNet

    torch.manual_seed(0)
    model_path = tmp_path / "full.pt"
    torch.save(TinyNet().eval(), model_path)  # a plain nn.Module (certification needs one)
    out = tmp_path / "run"
    code = main(["evaluate", "--model", str(model_path), "--trust-pickle", "--data", str(assets.data),
                 "--t-max", "2", "--out", str(out), "--quiet", "--no-report", *flag.split()])
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert "certified_lower" in data["global"]
    for r in data["inputs"]:
        assert 0 <= r["certified_lower"] <= r["lower"] <= r["upper"]
        assert r["lower_kind"] == ("certified" if r["certified_lower"] == r["lower"] else "grid")
        if flag == "--certify-only":
            assert r["lower"] == r["certified_lower"] and r["upper"] == 36
    assert data["config"]["certify_only" if flag == "--certify-only" else "certify"] is True
    assert data["config"]["certify_method"] == ("crown" if "crown" in flag else "auto")


def test_precision_option(assets: Assets, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--precision bfloat16`` on a module: the float32 bounds, and results.json says so; on a
    TorchScript model (no module to copy) one line naming the option, exit 2."""
    common = ["--data", "mnist:test", "--limit", "2", "--t-max", "1", "--quiet", "--no-report", "--json"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["evaluate", "--model", "paper-mnist", *common, "--out", str(tmp_path / "f")]) == 0
        ref = json.loads(capsys.readouterr().out)
        assert main(["evaluate", "--model", "paper-mnist", *common, "--precision", "bfloat16",
                     "--out", str(tmp_path / "b")]) == 0
    low = json.loads(capsys.readouterr().out)
    assert ref["precision"] == "float32" and low["precision"] == "bfloat16"
    assert low["config"]["precision"] == "bfloat16" and low["config"]["precision_used"] == "bfloat16"
    # the grid lower bound is the float32 one; the upper bound is an example the search found
    # (bfloat16 sensitivities may rank subsets differently), re-checked in float32 either way
    assert [lo for lo, _ in _bounds(low)] == [lo for lo, _ in _bounds(ref)]
    assert all(lo <= up for lo, up in _bounds(low))
    bad = run_cli("evaluate", "--model", assets.model, "--data", assets.data, "--limit", "1", "--t-max", "1",
                  "--precision", "bfloat16", "--quiet", "--out", tmp_path / "s")
    assert bad.returncode == 2
    assert "precision" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
