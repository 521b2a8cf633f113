"""CIFAR-10: the shared first 100 test images (``cifar10:test``) and the official
``cifar-10-batches-py`` pickles (``cifar10:SPLIT@DIR``), read by an unpickler that allows plain
containers and numpy arrays only."""

from __future__ import annotations

import importlib
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..paths import DataFileNotFoundError, require_file
from .arrays import read_npz
from .source import Source, in_memory

__all__ = ["open_cifar10"]

_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles from Python 3 store raw bytes
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        """The allowed globals (``numpy.core`` mapped to ``numpy._core`` on numpy >= 2)."""
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data pickle")
        if module.startswith("numpy.core"):
            try:  # numpy >= 2 renamed numpy.core to numpy._core
                return getattr(importlib.import_module("numpy._core" + module[10:]), name)
            except ImportError:
                pass
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(x (N, 3, 32, 32) uint8, y (N,) int64)`` of one python batch file."""
    try:
        with path.open("rb") as fh:
            batch = _ArrayUnpickler(fh, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise ValueError(f"data: expected a CIFAR-10 python batch, got {str(path)!r} ({exc})") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"data: expected a dict with b'data' and b'labels' in {str(path)!r}")
    x = np.asarray(batch[b"data"], dtype=np.uint8)
    y = np.asarray(batch[b"labels"], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3072 or y.shape != (x.shape[0],):
        raise ValueError(f"data: expected data (N, 3072) and N labels in {str(path)!r}, got {x.shape}")
    return x.reshape(-1, 3, 32, 32), y


def _batches(name: str, split: str, folder: str) -> Source:
    """The official python batches of ``split`` in ``folder``."""
    base = Path(folder).expanduser()
    files = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    missing = [f for f in files if not (base / f).is_file()]
    if missing:
        raise DataFileNotFoundError(
            f"data {name!r}: expected the CIFAR-10 python batches {missing} in {str(base)!r}, got no such file"
        )
    parts = [_cifar_batch(base / f) for f in files]
    return in_memory(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), name, [])


def open_cifar10(split: str, folder: str | None, root: str | os.PathLike[str] | None) -> Source:
    """``cifar10:SPLIT`` from the python batches in ``folder``, else (test split only) the first
    100 test images of the shared data.

    Raises:
        DataFileNotFoundError: the files are missing.
        ValueError: they are corrupt, of the wrong shape, or the split is not in the shared data.
    """
    name = f"cifar10:{split}"
    if folder is not None:
        return _batches(name, split, folder)
    if split != "test":
        raise ValueError(
            f"data {name!r}: the shared data holds only the first 100 test images; pass "
            "cifar10:train@DIR with DIR holding the official cifar-10-batches-py"
        )
    path = require_file("cifar10/cifar10_test_first100.npz", root, what=f"data {name!r}")
    x_hwc, y_npz = read_npz(path)
    if x_hwc.ndim != 4 or x_hwc.shape[1:] != (32, 32, 3):
        raise ValueError(f"data {name!r}: expected x (N, 32, 32, 3), got {x_hwc.shape}")
    notes = ["only the first 100 CIFAR-10 test images are in the shared data"]
    return in_memory(x_hwc.transpose(0, 3, 1, 2), y_npz, name, notes)
