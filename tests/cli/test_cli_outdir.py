"""Output folders on the command line: a run is never replaced by accident (``--resume`` /
``--overwrite``), and every file-system failure is one line naming ``--out`` and the path, exit 2."""

from __future__ import annotations

import errno
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import l0tre.atomic
from l0tre.cli import main

from .conftest import Assets, cli_env, run_cli

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_REASON = "running as root: root ignores file permissions (the monkeypatched tests cover this case)"
NOBODY = 65534


def _evaluate(assets: Assets, out: Path, *extra: str) -> list[str]:
    """A quick ``evaluate`` (2 inputs, t = 1) into ``out``."""
    return ["evaluate", "--model", str(assets.model), "--data", str(assets.data), "--limit", "2", "--t-max", "1",
            "--quiet", "--no-report", "--out", str(out), *extra]


def _one_error_line(err: str) -> str:
    """The single ``l0tre: error:`` line of ``err`` (asserts there is nothing else)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("l0tre: error: ") and "Traceback" not in err, err
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture()
def finished(assets: Assets, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A folder holding a finished run (checkpoint.pt, results.json, ...)."""
    out = tmp_path / "run"
    assert main(_evaluate(assets, out)) == 0
    capsys.readouterr()
    assert (out / "checkpoint.pt").is_file() and (out / "results.json").is_file()
    return out


# -- never replace a run by accident ------------------------------------------------------------------
def test_rerun_without_resume_refuses_and_keeps_the_run(assets: Assets, finished: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(finished)
    assert main(_evaluate(assets, finished, "--epsilon", "0.25")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--resume" in line and "--overwrite" in line and str(finished) in line and "checkpoint.pt" in line
    assert _snapshot(finished) == before  # the checkpoint (and every other file) byte-identical


def test_rerun_refusal_through_a_subprocess(assets: Assets, finished: Path) -> None:
    before = (finished / "checkpoint.pt").read_bytes()
    proc = run_cli(*_evaluate(assets, finished))
    assert proc.returncode == 2 and proc.stdout == ""
    line = _one_error_line(proc.stderr)
    assert "--resume" in line and "--overwrite" in line
    assert (finished / "checkpoint.pt").read_bytes() == before


def test_overwrite_starts_over(assets: Assets, finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*_evaluate(assets, finished, "--epsilon", "0.25", "--overwrite", "--json")]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["epsilon"] == 0.25
    saved = json.loads((finished / "results.json").read_text())
    assert saved["config"]["epsilon"] == 0.25 and saved["config"]["overwrite"] is True


def test_overwrite_says_what_it_removed(assets: Assets, finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [a for a in _evaluate(assets, finished, "--overwrite") if a != "--quiet"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "overwrite: removed the earlier run's checkpoint.pt, results.json" in err


def test_resume_continues_the_run(assets: Assets, finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = json.loads((finished / "results.json").read_text())
    assert main(_evaluate(assets, finished, "--resume", "--json")) == 0
    done = json.loads(capsys.readouterr().out)
    assert [(r["lower"], r["upper"]) for r in done["inputs"]] == [(r["lower"], r["upper"]) for r in ref["inputs"]]


def test_resume_and_overwrite_exclude_each_other(assets: Assets, finished: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_evaluate(assets, finished, "--resume", "--overwrite")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--overwrite" in line and "--resume" in line


def test_resume_without_a_checkpoint_keeps_the_results(assets: Assets, finished: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (finished / "checkpoint.pt").unlink()
    before = _snapshot(finished)
    assert main(_evaluate(assets, finished, "--resume")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("l0tre: error: --resume:") and "no checkpoint.pt" in line and "--overwrite" in line
    assert _snapshot(finished) == before


def test_resume_in_an_empty_folder_starts(assets: Assets, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [a for a in _evaluate(assets, tmp_path / "new", "--resume") if a != "--quiet"]
    assert main(args) == 0
    assert "resume: no checkpoint" in capsys.readouterr().err


def test_a_folder_with_other_files_is_used(assets: Assets, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(_evaluate(assets, tmp_path)) == 0
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "results.json").is_file()


def test_resume_of_another_configuration_names_overwrite(assets: Assets, finished: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_evaluate(assets, finished, "--resume", "--epsilon", "0.25")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("l0tre: error: checkpoint") and "--overwrite" in line


def test_attack_refuses_a_run_without_overwrite(assets: Assets, finished: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(finished)
    base = ["attack", "--model", str(assets.model), "--data", str(assets.data), "--indices", "0-1", "--quiet",
            "--out", str(finished)]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and "results.json" in err
    assert _snapshot(finished) == before
    assert main([*base, "--overwrite"]) == 0
    saved = json.loads((finished / "results.json").read_text())
    assert saved["config"]["command"] == "attack"
    assert not (finished / "checkpoint.pt").exists()  # the evaluate run was replaced as a whole


def test_demo_refuses_another_run(finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(finished)
    assert main(["demo", "--quiet", "--out", str(finished)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--overwrite" in line and "--resume" not in line
    assert _snapshot(finished) == before


def test_demo_replaces_an_earlier_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("L0TRE_DATA", raising=False)
    out = tmp_path / "demo"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"config": {"command": "demo"}, "global": {}, "inputs": []}))
    argv = ["demo", "--limit", "1", "--attack-limit", "0", "--time-budget", "1s", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["config"]["inputs"] == 1
    assert main(argv) == 0  # the demo's own output (demo.json) is replaced too


# -- file-system failures -------------------------------------------------------------------------------
@pytest.fixture()
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A folder with permissions 0o500 (restored afterwards so that pytest can clean up)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        yield folder
    finally:
        folder.chmod(0o700)


@pytest.mark.skipif(AS_ROOT, reason=ROOT_REASON)
@pytest.mark.parametrize("sub", ["", "sub", "sub/deeper"])
def test_read_only_out(assets: Assets, read_only: Path, sub: str) -> None:
    out = read_only / sub if sub else read_only
    proc = run_cli(*_evaluate(assets, out))
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr)
    assert "--out" in line and str(read_only) in line and ".tmp" not in line


def _as_nobody(*command: str) -> list[str]:
    """``command`` run as user ``nobody`` (through ``setpriv``)."""
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]


def _nobody_can_run_l0tre(cwd: Path) -> bool:
    """Whether ``setpriv`` exists and a subprocess as user ``nobody`` can import l0tre from this checkout."""
    if shutil.which("setpriv") is None:
        return False
    proc = subprocess.run(_as_nobody(sys.executable, "-c", "import l0tre.cli"), env=cli_env(), capture_output=True,
                          timeout=120, cwd=cwd)
    return proc.returncode == 0


@pytest.mark.skipif(not AS_ROOT, reason="test_read_only_out runs this case as the current user")
@pytest.mark.parametrize("sub", ["", "sub"])
def test_read_only_out_as_nobody(sub: str) -> None:
    """As root, the real permission check runs as user ``nobody`` in a subprocess (``setpriv``; the
    embedded model and data: nothing else needs to be readable)."""
    base = Path(tempfile.mkdtemp(prefix="l0tre-ro-"))
    try:
        base.chmod(0o755)
        if not _nobody_can_run_l0tre(base):
            pytest.skip("setpriv is missing, or user nobody cannot run l0tre from this checkout")
        (base / "ro").mkdir(mode=0o555)
        out = base / "ro" / sub if sub else base / "ro"
        env = {**cli_env(), "HOME": str(base)}
        proc = subprocess.run(
            _as_nobody(sys.executable, "-m", "l0tre", "evaluate", "--model", "paper-mnist", "--data", "mnist:test",
                       "--limit", "1", "--t-max", "1", "--quiet", "--no-report", "--out", str(out)),
            env=env, capture_output=True, text=True, timeout=120, cwd=base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr)
    assert line.startswith("l0tre: error: --out: cannot ") and str(base / "ro") in line
    assert ("create the folder" if sub else "write in the folder") in line and "Permission denied" in line


def _deny(*_args: object, **_kwargs: object) -> None:
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


def test_unwritable_out_is_one_line(assets: Assets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The write check fails as in a read-only folder (works as root too): refused before the run."""
    monkeypatch.setattr(l0tre.atomic, "_open_temp", _deny)
    assert main(_evaluate(assets, tmp_path / "out")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == f"l0tre: error: --out: cannot write in the folder {str(tmp_path / 'out')!r} (Permission denied)"


def test_uncreatable_out_is_one_line(assets: Assets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A sub-folder of a read-only folder: its creation fails (``mkdir`` raises)."""
    monkeypatch.setattr(Path, "mkdir", _deny)
    out = tmp_path / "ro" / "sub"
    assert main(_evaluate(assets, out)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == f"l0tre: error: --out: cannot create the folder {str(out)!r} (Permission denied)"


def test_out_that_is_a_file(assets: Assets, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    assert main(_evaluate(assets, tmp_path / "file")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--out" in line and "existing file" in line
    assert main(_evaluate(assets, tmp_path / "file" / "sub")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--out" in line and str(tmp_path / "file") in line


_FULL_DISK = """
import errno, os, sys
import l0tre.atomic
calls, real = 0, os.fsync
def fsync(fd):
    global calls
    calls += 1
    if calls > int(sys.argv[1]):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real(fd)
l0tre.atomic.os.fsync = fsync
from l0tre.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("writes", [0, 3, 5])
def test_full_disk_during_the_run(assets: Assets, tmp_path: Path, writes: int) -> None:
    """The disk fills after ``writes`` files: one line naming --out and the file, exit 2, no
    "Exception ignored" traceback from the engine's final checkpoint, no temp file left."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(writes), *_evaluate(assets, out)],
                          capture_output=True, text=True, timeout=120, env=cli_env())
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr)
    assert line.startswith(f"l0tre: error: --out: cannot write {str(out)!r}"[:-1]) and "No space left" in line
    assert not list(out.glob(".*.tmp"))


def test_attack_unwritable_out_fails_before_attacking(assets: Assets, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    core = importlib.import_module("l0tre.apps.attack.core")

    def no_attack(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the attack ran although --out cannot be written")

    monkeypatch.setattr(core, "attack", no_attack)
    monkeypatch.setattr(l0tre.atomic, "_open_temp", _deny)
    assert main(["attack", "--model", str(assets.model), "--data", str(assets.data), "--quiet", "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out: cannot write in the folder" in err and "Permission denied" in err


def test_report_unwritable_dir(finished: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(l0tre.atomic, "_open_temp", _deny)
    assert main(["report", str(finished)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("l0tre: error: DIR: cannot write ") and str(finished) in line


# -- smaller points -------------------------------------------------------------------------------------
def test_plain_l0tre_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    line = _one_error_line(capsys.readouterr().err)
    for name in ("evaluate", "info", "models", "attack", "report", "demo"):
        assert name in line, name


def test_malicious_model_names_trust_pickle(tmp_path: Path, assets: Assets,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"w": Payload()}, tmp_path / "evil.pt")
    assert main(["evaluate", "--model", str(tmp_path / "evil.pt"), "--data", str(assets.data), "--out",
                 str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "holds pickled code" in line and "--trust-pickle" in line
    assert not (tmp_path / "pwned").exists()


def test_embedded_data_is_a_notice_not_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str],
                                                 recwarn: pytest.WarningsRecorder) -> None:
    monkeypatch.delenv("L0TRE_DATA", raising=False)
    assert main(["evaluate", "--model", "paper-mnist", "--data", "mnist:test", "--limit", "1", "--t-max", "1",
                 "--no-report", "--out", str(tmp_path / "out")]) == 0
    assert "data: no data root set: using the 100 MNIST test images embedded" in capsys.readouterr().err
    assert not [w for w in recwarn if "embedded" in str(w.message)]
