"""Atomic writes (:mod:`l0tre.atomic`): file modes follow the umask, and every file-system failure
is one :class:`~l0tre.atomic.OutputError` (an ``OSError``) naming the path."""

from __future__ import annotations

import errno
import os
import pickle
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import l0tre.atomic
from l0tre.atomic import (
    OutputError,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    check_writable_folder,
    make_folder,
)
from l0tre.outdir import RESULTS_JSON, remove_run_files, run_files, write_outputs
from tests.test_outdir import _result

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_REASON = "running as root: root ignores file permissions (the monkeypatched tests cover this case)"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _temp_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


@pytest.fixture()
def umask() -> Iterator[Any]:
    """Set the process umask inside the test (restored afterwards)."""
    saved = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(saved)


# -- modes --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_follow_the_umask(tmp_path: Path, umask: Any, mask: int, expected: int) -> None:
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_bytes(tmp_path / "b.bin", b"x")
    atomic_torch_save({"t": torch.zeros(1)}, tmp_path / "c.pt")
    for name in ("a.txt", "b.bin", "c.pt"):
        assert _mode(tmp_path / name) == expected, name


def test_replacing_a_file_keeps_its_mode(tmp_path: Path, umask: Any) -> None:
    umask(0o022)
    path = tmp_path / "a.txt"
    atomic_write_text(path, "one")
    path.chmod(0o640)
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and _mode(path) == 0o640


def test_output_folder_files_follow_the_umask(tmp_path: Path, umask: Any) -> None:
    """The files of ``l0tre evaluate`` (and the engine's checkpoint) are 0644 under umask 022."""
    umask(0o022)
    res, x = _result()
    write_outputs(tmp_path / "out", res, [0, 1, 2], x, {"model": "m"})
    res.save(tmp_path / "out" / "checkpoint.pt")  # the engine's checkpoint goes through the same writer
    files = sorted((tmp_path / "out").iterdir())
    assert files and all(_mode(p) == 0o644 for p in files), {p.name: oct(_mode(p)) for p in files}


# -- failures -------------------------------------------------------------------------------------------
def _fail_with(code: int) -> Any:
    def fail(*_args: object, **_kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    return fail


def test_unwritable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(l0tre.atomic.os, "open", _fail_with(errno.EACCES))
    with pytest.raises(OutputError) as info:
        atomic_write_text(tmp_path / "a.txt", "x")
    err = info.value
    assert isinstance(err, OSError) and err.errno == errno.EACCES
    assert str(err) == f"cannot write {str(tmp_path / 'a.txt')!r} (Permission denied)"
    assert err.path == str(tmp_path / "a.txt") and err.argument is None
    with pytest.raises(OutputError, match=r"^--out: cannot write in the folder .* \(Permission denied\)$"):
        check_writable_folder(tmp_path, argument="--out")


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_full_disk_leaves_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   where: str) -> None:
    path = tmp_path / "a.txt"
    atomic_write_text(path, "old")
    if where == "write":
        def write(fh: Any) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        with pytest.raises(OutputError) as info:
            l0tre.atomic.atomic_write(path, write, argument="checkpoint")
    else:
        monkeypatch.setattr(l0tre.atomic.os, where, _fail_with(errno.ENOSPC))
        with pytest.raises(OutputError) as info:
            atomic_write_text(path, "new", argument="checkpoint")
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == f"checkpoint: cannot write {str(path)!r} (No space left on device)"
    assert path.read_text() == "old" and not _temp_files(tmp_path)


def test_missing_parent_that_cannot_be_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Path, "mkdir", _fail_with(errno.EACCES))
    target = tmp_path / "sub" / "a.txt"
    with pytest.raises(OutputError, match=r"^cannot create the folder '.*sub' \(Permission denied\)$"):
        atomic_write_text(target, "x")


def test_folder_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"^--out: cannot use the folder .*existing file"):
        make_folder(tmp_path / "f", argument="--out")
    with pytest.raises(OutputError, match=r"cannot create the folder .*f/sub"):
        atomic_write_text(tmp_path / "f" / "sub" / "a.txt", "x")


@pytest.mark.skipif(AS_ROOT, reason=ROOT_REASON)
def test_read_only_folder_for_real(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match=r"\(Permission denied\)$") as info:
            atomic_write_text(folder / "a.txt", "x")
        assert info.value.errno == errno.EACCES
        with pytest.raises(OutputError, match=r"cannot create the folder"):
            atomic_write_text(folder / "sub" / "a.txt", "x")
    finally:
        folder.chmod(0o700)


def test_output_error_pickles_and_names_an_argument() -> None:
    err = OutputError("/x/checkpoint.pt", "No space left on device", code=errno.ENOSPC)
    named = err.for_argument("--out")
    assert str(named) == "--out: cannot write '/x/checkpoint.pt' (No space left on device)"
    back = pickle.loads(pickle.dumps(named))
    assert str(back) == str(named) and back.errno == errno.ENOSPC and back.argument == "--out"
    same = OutputError.from_os_error(named, "/other", argument="checkpoint")
    assert same is named  # an error that already names its argument is kept


def test_write_outputs_raises_output_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res, x = _result()
    monkeypatch.setattr(l0tre.atomic.os, "open", _fail_with(errno.EROFS))
    with pytest.raises(OSError, match=r"cannot write .*adversarial.npz' \(Read-only file system\)"):
        write_outputs(tmp_path, res, [0, 1, 2], x, {})
    assert not list(tmp_path.iterdir())


# -- run folders ----------------------------------------------------------------------------------------
def test_run_files_and_their_removal(tmp_path: Path) -> None:
    assert run_files(tmp_path / "missing") == [] and run_files(tmp_path) == []
    for name in ("notes.txt", RESULTS_JSON, "checkpoint.pt", "examples.png"):
        (tmp_path / name).write_text("x")
    assert run_files(tmp_path) == ["checkpoint.pt", RESULTS_JSON, "examples.png"]
    assert remove_run_files(tmp_path) == ["checkpoint.pt", RESULTS_JSON, "examples.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
