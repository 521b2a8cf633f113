"""User errors: one line ``l0tre: error: ...`` on stderr, exit code 2, no traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from l0tre.cli import main

from .conftest import Assets, run_cli

Args = Callable[[Assets, Path], list[str]]


def _ev(*extra: str) -> Args:
    """``evaluate`` on the tiny model and data with ``extra`` options."""
    return lambda a, out: ["evaluate", "--model", str(a.model), "--data", str(a.data), "--out", str(out),
                           "--quiet", "--no-report", *extra]


CASES: dict[str, tuple[Args, str]] = {
    "missing model file": (lambda a, out: ["evaluate", "--model", str(a.root / "nope.pt"), "--data", str(a.data),
                                           "--out", str(out)], "no such file"),
    "corrupt model file": (lambda a, out: ["evaluate", "--model", str(a.corrupt_model), "--data", str(a.data),
                                           "--out", str(out)], "model"),
    "unknown model name": (lambda a, out: ["evaluate", "--model", "no-such-model", "--data", str(a.data),
                                           "--out", str(out)], "built-in name"),
    "missing data file": (lambda a, out: ["evaluate", "--model", str(a.model), "--data", str(a.root / "nope.npz"),
                                          "--out", str(out)], "no such path"),
    "corrupt data file": (lambda a, out: ["evaluate", "--model", str(a.model), "--data", str(a.corrupt_data),
                                          "--out", str(out)], ".npz"),
    "unknown data spec": (lambda a, out: ["evaluate", "--model", str(a.model), "--data", "svhn:test",
                                          "--out", str(out)], "data"),
    "shape mismatch": (lambda a, out: ["evaluate", "--model", str(a.model), "--data", str(a.data_small),
                                       "--out", str(out)], "shape"),
    "data out of range": (lambda a, out: ["evaluate", "--model", str(a.model), "--data", str(a.data_range),
                                          "--out", str(out)], "[0, 1]"),
    "epsilon not dividing 1": (_ev("--epsilon", "0.3"), "epsilon"),
    "epsilon not a number": (_ev("--epsilon", "abc"), "--epsilon"),
    "t_max zero": (_ev("--t-max", "0"), "t_max"),
    "bad time budget": (_ev("--time-budget", "10x"), "duration"),
    "negative batch size": (_ev("--batch-size", "-3"), "batch_size"),
    "bad features": (_ev("--features", "voxel"), "--features"),
    "bad device": (_ev("--device", "tpu"), "--device"),
    "bad indices": (_ev("--indices", "1,a"), "indices"),
    "index out of range": (_ev("--indices", "0,99"), "indices"),
    "zero limit": (_ev("--limit", "0"), "limit"),
    "bad max memory": (_ev("--max-memory", "lots"), "size"),
    "too many evaluations": (_ev("--t-max", "3", "--max-evaluations", "1000"), "max_evaluations"),
    "only-correct without labels": (lambda a, out: ["evaluate", "--model", str(a.model), "--data",
                                                    str(a.data_nolabels), "--only-correct", "--out", str(out)],
                                    "labels"),
    "missing required option": (lambda a, out: ["evaluate", "--model", str(a.model)], "--data"),
    "unknown option": (_ev("--frobnicate"), "unrecognized"),
    "no command": (lambda a, out: [], "command"),
    "unknown command": (lambda a, out: ["explode"], "invalid choice"),
    "report of a missing folder": (lambda a, out: ["report", str(out / "nothing")], "no such folder"),
    "report without results": (lambda a, out: ["report", str(a.root)], "results.json"),
    "info with bad epsilon": (lambda a, out: ["info", "--model", str(a.model), "--data", str(a.data),
                                              "--epsilon", "2"], "epsilon"),
    "models with a missing data root": (lambda a, out: ["models", "--data-root", str(out / "none")], "data_root"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_error_one_line_exit_2(case: str, assets: Assets, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build, needle = CASES[case]
    code = main(build(assets, tmp_path / "out"))
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("l0tre: error: ")
    assert needle.lower() in lines[0].lower()
    assert "Traceback" not in captured.err


def test_resume_with_other_options_is_an_error(assets: Assets, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    base = ["evaluate", "--model", str(assets.model), "--data", str(assets.data), "--limit", "2", "--t-max", "1",
            "--out", str(tmp_path), "--quiet", "--no-report"]
    assert main(base) == 0
    capsys.readouterr()
    assert main([*base, "--epsilon", "0.25", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("l0tre: error: checkpoint") and err.count("\n") == 1


def test_debug_shows_traceback(assets: Assets, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["evaluate", "--model", str(assets.root / "nope.pt"), "--data", str(assets.data), "--debug",
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("l0tre: error: ")


@pytest.mark.parametrize("case", ["missing model file", "shape mismatch", "bad time budget"])
def test_error_through_subprocess(case: str, assets: Assets, tmp_path: Path) -> None:
    build, needle = CASES[case]
    proc = run_cli(*build(assets, tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("l0tre: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert needle.lower() in proc.stderr.lower() and "Traceback" not in proc.stderr
    assert proc.stdout == ""
