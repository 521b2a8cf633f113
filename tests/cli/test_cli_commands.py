"""``l0tre info``, ``models``, ``report``, ``demo`` and the option parsers."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest

from l0tre.cli import main
from l0tre.cli.parsing import parse_count, parse_duration, parse_indices, parse_size

from .conftest import Assets, run_cli

BUILTINS = ("paper-mnist", "paper-mnist-softmax", "paper-sdnn", "cifar10-resnet20", "mnist-cnn-tutorial",
            "mnist-smallcnn-trades")


def test_info_prints_evaluations_per_level(assets: Assets) -> None:
    proc = run_cli("info", "--model", assets.model, "--data", assets.data, "--t-max", "3", "--epsilon", "0.5")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for word in ("model", "parameters", "device", "evaluations/s", "t=1", "t=2", "t=3", "total"):
        assert word in out, word
    assert "235" in out  # parameters of TinyNet: 4*9+4 + 64*3+3
    # independent count of grid points: per pixel, the grid values {0, 0.5, 1} that differ from it
    import itertools

    import numpy as np

    x = np.load(assets.data)["x"].reshape(6, -1).astype(np.float64)
    valid = [[sum(v != g for g in (0.0, 0.5, 1.0)) for v in row] for row in x]
    t1 = sum(sum(row) for row in valid)
    t2 = sum(a * b for row in valid for a, b in itertools.combinations(row, 2))
    assert t1 == 6 * 36 * 3 and t2 == 6 * math.comb(36, 2) * 9  # no pixel of the fixture is on the grid
    assert f"{t1:,}" in out and f"{t2:,}" in out


def test_info_json(assets: Assets, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--model", str(assets.model), "--data", str(assets.data), "--t-max", "2",
                 "--epsilon", "0.25", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 235 and info["n_features"] == 36 and info["grid_values"] == 5
    assert [lv["t"] for lv in info["levels"]] == [1, 2]
    assert info["levels"][0]["evaluations"] == 6 * 36 * 5
    assert info["evaluations_per_second"] > 0 and info["levels"][1]["seconds_estimate"] > 0


def test_info_without_data(assets: Assets, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--model", str(assets.model)]) == 0
    assert "pass --data" in capsys.readouterr().out


def test_models_lists_the_builtins() -> None:
    proc = run_cli("models")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["name", "input", "output", "available"]
    names = [ln.split()[0] for ln in lines[1:] if ln.strip()]
    assert names == list(BUILTINS)
    assert "paper-mnist " in proc.stdout and "1x28x28" in proc.stdout and "3x32x32" in proc.stdout


def test_report_rebuilds_from_folder(assets: Assets, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["evaluate", "--model", str(assets.model), "--data", str(assets.data), "--t-max", "1", "--quiet",
                 "--no-report", "--out", str(out)]) == 0
    assert not (out / "index.html").exists()
    (out / "checkpoint.pt").unlink()
    (out / "result.pt").unlink()  # the report needs results.json and adversarial.npz only
    proc = run_cli("report", out)
    assert proc.returncode == 0, proc.stderr
    for name in ("convergence.png", "per_input.png", "level_time.png", "adversarial.png", "index.html"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 1000, name
        assert str(path) in proc.stdout
    page = (out / "index.html").read_text()
    for name in ("convergence.png", "per_input.png", "level_time.png", "adversarial.png"):
        assert f"src='{name}'" in page
    assert "Summary" in page and "global lower bound" in page
    assert (out / "per_input.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_adversarial_examples(assets: Assets, tmp_path: Path) -> None:
    assert main(["evaluate", "--model", str(assets.steady), "--data", str(assets.data), "--t-max", "1",
                 "--quiet", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "index.html").is_file() and not (tmp_path / "adversarial.png").exists()
    assert "no adversarial example found" in (tmp_path / "index.html").read_text()


def test_demo_uses_only_embedded_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("L0TRE_DATA", str(tmp_path / "does-not-exist"))  # an error if the demo read it
    assert main(["demo", "--limit", "2", "--attack-limit", "1", "--time-budget", "1s", "--quiet",
                 "--out", str(tmp_path / "demo")]) == 0
    assert os.environ["L0TRE_DATA"] == str(tmp_path / "does-not-exist")  # restored
    out = capsys.readouterr().out
    assert "demo output" in out and "You are looking at" in out
    data = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert data["config"]["model"] == "paper-sdnn" and data["config"]["data_root"] is None
    assert data["config"]["data_name"].startswith("mnist14:test (embedded")
    assert data["config"]["certify"] is True and data["config"]["epsilon"] == 0.5
    assert (tmp_path / "demo" / "index.html").is_file() and (tmp_path / "demo" / "fig2_inputs.png").is_file()
    attack = json.loads((tmp_path / "demo" / "attack" / "results.json").read_text())
    assert attack["config"]["model"] == "paper-mnist" and len(attack["inputs"]) == 1
    assert (tmp_path / "demo" / "attack" / "examples.png").is_file()


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert "l0tre" in capsys.readouterr().out
    assert main(["evaluate", "--help"]) == 0
    text = capsys.readouterr().out
    for opt in ("--model", "--data", "--epsilon", "--t-max", "--features", "--time-budget", "--device",
                "--batch-size", "--out", "--resume", "--overwrite", "--quiet", "--seed", "--json", "--limit",
                "--indices", "--start", "--only-correct", "--data-root", "--trust-pickle", "--arch", "--max-memory",
                "--max-evaluations", "--report-every", "--debug"):
        assert opt in text, opt


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600), ("1h", 3600),
                                               ("1h30m", 5400), ("2.5m", 150), (" 45 sec ", 45), ("0.01s", 0.01)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10x", "m", "-5", "0", "1h30", "1.2.3s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="time budget"):
        parse_duration(text)


def test_other_parsers() -> None:
    assert parse_indices("0,5,9") == [0, 5, 9]
    assert parse_indices("0-2, 7") == [0, 1, 2, 7]
    for bad in ("a", "3-1", ",", "-1"):
        with pytest.raises(ValueError, match="indices"):
            parse_indices(bad)
    assert parse_size("512M") == 512 << 20 and parse_size("2G") == 2 << 30 and parse_size("1000") == 1000
    assert parse_size("1.5GiB") == 3 << 29
    with pytest.raises(ValueError):
        parse_size("0")
    assert parse_count("1e9") == 10**9 and parse_count("10_000") == 10000
    for bad in ("0", "1.5", "x", "-3"):
        with pytest.raises(ValueError):
            parse_count(bad)


def test_console_script_is_installed() -> None:
    exe = shutil.which("l0tre", path=os.path.dirname(sys.executable))
    assert exe is not None
