"""``.npy`` files (``x`` only) and ``.npz`` files (``x`` and optional ``y``); never unpickled."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .source import Source, in_memory

__all__ = ["array_file_kind", "open_array_file", "read_npy", "read_npz"]

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive (an empty one starts with PK\x05\x06)
_PICKLED = "Object arrays cannot be loaded"
_PICKLED_FILE = "pickled data"


def array_file_kind(path: Path) -> str | None:
    """``"npz"`` or ``"npy"`` from the first bytes of ``path``, ``None`` when it is neither
    (the suffix is not trusted). Raises ``OSError`` when the file cannot be read."""
    with path.open("rb") as fh:
        head = fh.read(len(_NPY_MAGIC))
    if head.startswith(_ZIP_MAGIC):
        return "npz"
    if head == _NPY_MAGIC:
        return "npy"
    return None


def _not_valid(path: Path, why: str) -> ValueError:
    """The error for a file that is not an array file numpy writes."""
    return ValueError(f"data: {str(path)!r} is not a valid .npz/.npy file ({why})")


def _check_kind(path: Path) -> str:
    """The kind of array file ``path`` holds; a ``ValueError`` for anything else."""
    try:
        kind = array_file_kind(path)
    except OSError as exc:
        raise ValueError(f"data: expected a readable .npz/.npy file, got {str(path)!r} ({exc})") from exc
    if kind is None:
        raise _not_valid(path, "it starts neither like a zip archive (.npz) nor like a .npy array")
    return kind


def _load_error(path: Path, exc: BaseException) -> ValueError:
    """A one-line error for a failed ``np.load`` (object arrays named as such, not as pickle options)."""
    text = str(exc)
    if _PICKLED in text or _PICKLED_FILE in text:
        return _not_valid(path, "it holds Python objects (object arrays); save plain numeric arrays")
    return _not_valid(path, f"{type(exc).__name__}: {text.splitlines()[0] if text else 'truncated'}")


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(x, y or None)`` from a ``.npz`` (a ``.npy`` gives ``x`` alone).

    Raises:
        ValueError: not a valid array file, or no array ``x`` in it.
    """
    if _check_kind(path) == "npy":
        return read_npy(path), None
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise ValueError(f"data: expected an array 'x' in {str(path)!r}, got keys {z.files}")
            return z["x"], (z["y"] if "y" in z.files else None)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith("data:"):
            raise
        raise _load_error(path, exc) from exc


def read_npy(path: Path) -> np.ndarray:
    """The array of a ``.npy`` file (a ``.npz`` gives its ``x``).

    Raises:
        ValueError: not a valid array file.
    """
    if _check_kind(path) == "npz":
        return read_npz(path)[0]
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (OSError, EOFError, ValueError) as exc:
        raise _load_error(path, exc) from exc


def open_array_file(path: Path, input_shape: tuple[int, int, int] | None) -> Source:
    """A ``.npy``/``.npz`` file as a source: ``(N, H, W)`` gets one channel, channels-last
    ``(N, H, W, C)`` is transposed when ``input_shape`` says so.

    Raises:
        ValueError: not a valid array file, or images of another shape.
    """
    notes: list[str] = []
    x, y = read_npz(path) if path.suffix.lower() == ".npz" else (read_npy(path), None)
    if x.ndim == 3:
        x = x[:, None]
        notes.append("x of shape (N, H, W) given one channel")
    if x.ndim != 4:
        raise ValueError(f"x: expected an array (N, C, H, W), got shape {x.shape}")
    if input_shape is not None and x.shape[1:] != tuple(input_shape):
        c, h, w = input_shape
        if x.shape[1:] == (h, w, c):
            x = x.transpose(0, 3, 1, 2)
            notes.append("channels-last x transposed to (N, C, H, W)")
        else:
            raise ValueError(f"input_shape: expected images of shape {tuple(input_shape)}, got {x.shape[1:]}")
    return in_memory(x, y, path.name, notes)
