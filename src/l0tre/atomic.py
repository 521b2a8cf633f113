"""Atomic file writes: a temp file beside the target, flushed and fsynced, then ``os.replace``.

A reader (or a crash) never sees a half-written checkpoint, results file or cache. Files are
created with the mode a plain ``open()`` would give them (``0o666`` less the umask; an existing
target keeps its mode), and every file-system failure (read-only folder, missing parent that
cannot be created, full disk) is raised as one :class:`OutputError` naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch

__all__ = [
    "OutputError",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable_folder",
    "make_folder",
]

_TEMP_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_BINARY", 0))


class OutputError(OSError):
    """A file or folder could not be written: read-only, a missing parent that cannot be
    created, a full disk...

    ``str(err)`` is one line: ``"ARGUMENT: cannot ACTION 'PATH' (REASON)"`` (no argument
    prefix when none is known). ``errno`` is the failing call's, when it had one.

    Attributes:
        path: the file or folder that could not be written.
        action: what failed, e.g. ``"write"``, ``"create the folder"``.
        reason: the operating system's reason, e.g. ``"Permission denied"``.
        argument: the argument that named the path (``"--out"``, ``"checkpoint"``), or ``None``.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, *, action: str = "write",
                 argument: str | None = None, code: int | None = None) -> None:
        """The failure to ``action`` ``path`` for ``reason``, named as ``argument``; ``code`` is the errno."""
        self.path = os.fspath(path)
        self.action = action
        self.reason = reason
        self.argument = argument
        prefix = f"{argument}: " if argument else ""
        super().__init__(f"{prefix}cannot {action} {self.path!r} ({reason})")
        self.errno = code

    @classmethod
    def from_os_error(cls, exc: OSError, path: str | os.PathLike[str], *, action: str = "write",
                      argument: str | None = None) -> OutputError:
        """The :class:`OutputError` for ``exc`` (an ``OutputError`` gets the argument if it has none)."""
        if isinstance(exc, OutputError):
            return exc if exc.argument is not None or argument is None else exc.for_argument(argument)
        reason = exc.strerror or str(exc) or type(exc).__name__
        return cls(path, reason, action=action, argument=argument, code=exc.errno)

    def __reduce__(self) -> tuple[object, ...]:
        """Pickle support (the constructor's arguments are not the message)."""
        return _rebuild, (self.path, self.reason, self.action, self.argument, self.errno)

    def for_argument(self, argument: str) -> OutputError:
        """The same failure, its message naming ``argument`` (e.g. ``"--out"``)."""
        return OutputError(self.path, self.reason, action=self.action, argument=argument, code=self.errno)


def _rebuild(path: str, reason: str, action: str, argument: str | None, code: int | None) -> OutputError:
    """Unpickle an :class:`OutputError`."""
    return OutputError(path, reason, action=action, argument=argument, code=code)


def make_folder(path: str | os.PathLike[str], *, argument: str | None = None) -> Path:
    """Create the folder ``path`` and its parents (nothing when it exists).

    Raises:
        OutputError: it cannot be created, or ``path`` is an existing file.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(folder, "it is an existing file, not a folder", action="use the folder", argument=argument,
                          code=errno.ENOTDIR)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError.from_os_error(exc, folder, action="create the folder", argument=argument) from exc
    return folder


def _open_temp(target: Path) -> tuple[int, Path]:
    """A new, empty temp file beside ``target``: ``(fd, path)``, mode as ``open()`` would give."""
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o666), tmp  # the umask applies, as for open()
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(target.parent))


def check_writable_folder(path: str | os.PathLike[str], *, argument: str | None = None) -> Path:
    """Create the folder ``path`` if needed and check that a file can be written in it (a temp
    file is created and removed), so a run fails before it starts rather than at its first write.

    Raises:
        OutputError: the folder cannot be created or written in.
    """
    folder = make_folder(path, argument=argument)
    try:
        fd, tmp = _open_temp(folder / "write-check")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputError.from_os_error(exc, folder, action="write in the folder", argument=argument) from exc
    return folder


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object], *,
                 argument: str | None = None) -> None:
    """Call ``write(fh)`` on a binary temp file in the target's folder, then move it into place.

    Args:
        path: the target file (its folder is created if needed).
        write: writes the content.
        argument: the argument that named ``path``, for the error message.

    Raises:
        OutputError: the folder or file cannot be written (nothing of the attempt is left).
    """
    target = Path(path)
    make_folder(target.parent, argument=argument)
    try:
        fd, tmp = _open_temp(target)
    except OSError as exc:
        raise OutputError.from_os_error(exc, target, argument=argument) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            _keep_mode(target, fh.fileno())
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError.from_os_error(exc, target, argument=argument) from exc
        raise


def _keep_mode(target: Path, fd: int) -> None:
    """Give the new file ``fd`` the mode of the ``target`` it replaces (as writing in place would)."""
    if not hasattr(os, "fchmod"):
        return
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        return
    os.fchmod(fd, mode)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, argument: str | None = None) -> None:
    """Write ``data`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(data), argument=argument)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, argument: str | None = None) -> None:
    """Write UTF-8 ``text`` atomically (see :func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode("utf-8"), argument=argument)


def atomic_torch_save(obj: object, path: str | os.PathLike[str], *, argument: str | None = None) -> None:
    """``torch.save`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda fh: torch.save(obj, fh), argument=argument)
