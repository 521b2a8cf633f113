"""Data loading: named data sets, image folders and ``.npy``/``.npz`` arrays.

Every loader returns a :class:`Dataset` with images ``x`` as float32 ``(N, C, H, W)`` in
``[0, 1]`` (pixel space, the units the engine and the user work in).

Specs accepted by :func:`load_data`:

* ``mnist:test`` / ``mnist:train`` — IDX files under ``<data root>/mnist/`` (or
  ``mnist:test@DIR``). With no data root, ``mnist:test`` falls back to the first 100
  test images embedded in the package.
* ``cifar10:test`` — ``<data root>/cifar10/cifar10_test_first100.npz`` (the first 100
  test images); ``cifar10:test@DIR`` / ``cifar10:train@DIR`` read the official
  ``cifar-10-batches-py`` pickles in ``DIR``.
* a folder of PNG/JPEG images (a label is read from a trailing ``_<int>`` in the name);
* a ``.npy`` file (``x`` only) or a ``.npz`` file (``x`` and optional ``y``).
"""

from __future__ import annotations

import gzip
import importlib
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .paths import DataFileNotFoundError, data_root, embedded_file, require_file

__all__ = ["Dataset", "load_data", "read_idx"]

_SPEC = re.compile(r"^(mnist|cifar10):(train|test)(?:@(.+))?$")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
_LABEL = re.compile(r"_(\d+)$")
IndicesArg = Sequence[int] | np.ndarray | torch.Tensor | None
SPECS_HELP = (
    "mnist:test, mnist:train, cifar10:test, cifar10:test@DIR, cifar10:train@DIR, "
    "an image folder, a .npy or .npz file"
)


@dataclass
class Dataset:
    """Images in pixel space with optional labels.

    Attributes:
        x: float32 ``(N, C, H, W)`` with values in ``[0, 1]``.
        y: int64 labels ``(N,)``, or ``None`` when the source has none.
        indices: int64 ``(N,)``: each image's position in the source set.
        name: what was loaded (the spec).
        notes: conversions and fallbacks applied, for reports.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    indices: torch.Tensor
    name: str
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class _Source:
    """A data source before selection: ``n`` images, fetched by position with ``take``."""

    n: int
    take: Callable[[np.ndarray], np.ndarray]  # positions (M,) -> (M, C, H, W) uint8/float
    y: np.ndarray | None
    name: str
    notes: list[str]


def _in_memory(x: np.ndarray, y: np.ndarray | None, name: str, notes: list[str]) -> _Source:
    return _Source(int(x.shape[0]), lambda pos: x[pos], y, name, notes)


# -- MNIST (IDX) ------------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) holding unsigned bytes."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"data: expected a readable IDX file, got {str(path)!r} ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(
            f"data: expected an IDX file of unsigned bytes, got header {raw[:4]!r} in {str(path)!r}"
        )
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 0
    if len(raw) != offset + count:
        raise ValueError(
            f"data: expected {offset + count} bytes for an IDX array of shape {dims} in "
            f"{str(path)!r}, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _mnist(split: str, folder: str | None, root: str | os.PathLike[str] | None) -> _Source:
    prefix = "t10k" if split == "test" else "train"
    name = f"mnist:{split}"
    if folder is None and data_root(root) is None:
        if split != "test":
            raise DataFileNotFoundError(
                f"data {name!r}: needs the MNIST IDX files under <data root>/mnist/; pass "
                "--data-root DIR / data_root=DIR or set L0TRE_DATA=DIR (only the first 100 "
                "mnist:test images are embedded)"
            )
        with np.load(embedded_file("mnist_test_100.npz"), allow_pickle=False) as z:
            x_emb, y_emb = z["x"][:, None], z["y"].astype(np.int64)
        note = "no data root set: using the 100 MNIST test images embedded in the package"
        return _in_memory(x_emb, y_emb, f"{name} (embedded 100)", [note])

    base = Path(folder).expanduser() if folder is not None else _root_dir(root) / "mnist"

    def find(kind: str) -> Path | None:
        stem = f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        return next((base / c for c in (f"{stem}.gz", stem) if (base / c).is_file()), None)

    images = find("images")
    if images is None:
        raise DataFileNotFoundError(
            f"data {name!r}: expected {prefix}-images-idx3-ubyte.gz in {str(base)!r}, "
            "got no such file"
        )
    x = read_idx(images)
    if x.ndim != 3:
        raise ValueError(f"data {name!r}: expected images (N, 28, 28), got shape {x.shape}")
    notes: list[str] = []
    labels = find("labels")
    y: np.ndarray | None = None
    if labels is None:
        notes.append(f"no {prefix}-labels-idx1-ubyte file found: labels are unknown")
    else:
        y = read_idx(labels).astype(np.int64)
        if y.shape != (x.shape[0],):
            raise ValueError(f"data {name!r}: expected {x.shape[0]} labels, got shape {y.shape}")
    return _in_memory(x[:, None], y, name, notes)


def _root_dir(root: str | os.PathLike[str] | None) -> Path:
    base = data_root(root)
    if base is None:  # callers check first; kept for a clear message
        raise DataFileNotFoundError("data: no data root set; pass data_root=DIR or set L0TRE_DATA")
    return base


# -- CIFAR-10 -------------------------------------------------------------------------------
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
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data pickle")
        if module.startswith("numpy.core"):
            try:  # numpy >= 2 renamed numpy.core to numpy._core
                return getattr(importlib.import_module("numpy._core" + module[10:]), name)
            except ImportError:
                pass
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as fh:
            batch = _ArrayUnpickler(fh, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise ValueError(
            f"data: expected a CIFAR-10 python batch, got {str(path)!r} ({exc})"
        ) from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"data: expected a dict with b'data' and b'labels' in {str(path)!r}")
    x = np.asarray(batch[b"data"], dtype=np.uint8)
    y = np.asarray(batch[b"labels"], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3072 or y.shape != (x.shape[0],):
        raise ValueError(
            f"data: expected data (N, 3072) and N labels in {str(path)!r}, got {x.shape}"
        )
    return x.reshape(-1, 3, 32, 32), y


def _cifar10(split: str, folder: str | None, root: str | os.PathLike[str] | None) -> _Source:
    name = f"cifar10:{split}"
    notes: list[str] = []
    if folder is not None:
        base = Path(folder).expanduser()
        files = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
        missing = [f for f in files if not (base / f).is_file()]
        if missing:
            raise DataFileNotFoundError(
                f"data {name!r}: expected the CIFAR-10 python batches {missing} in {str(base)!r}, "
                "got no such file"
            )
        parts = [_cifar_batch(base / f) for f in files]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        return _in_memory(x, y, name, notes)
    if split != "test":
        raise ValueError(
            f"data {name!r}: the shared data holds only the first 100 test images; pass "
            "cifar10:train@DIR with DIR holding the official cifar-10-batches-py"
        )
    path = require_file("cifar10/cifar10_test_first100.npz", root, what=f"data {name!r}")
    x_hwc, y_npz = _read_npz(path)
    if x_hwc.ndim != 4 or x_hwc.shape[1:] != (32, 32, 3):
        raise ValueError(f"data {name!r}: expected x (N, 32, 32, 3), got {x_hwc.shape}")
    notes.append("only the first 100 CIFAR-10 test images are in the shared data")
    return _in_memory(x_hwc.transpose(0, 3, 1, 2), y_npz, name, notes)


# -- arrays and images ----------------------------------------------------------------------
def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise ValueError(
                    f"data: expected an array 'x' in {str(path)!r}, got keys {z.files}"
                )
            return z["x"], (z["y"] if "y" in z.files else None)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith("data:"):
            raise
        raise ValueError(f"data: expected a readable .npz file, got {str(path)!r} ({exc})") from exc


def _array_file(path: Path, input_shape: tuple[int, int, int] | None) -> _Source:
    notes: list[str] = []
    if path.suffix.lower() == ".npz":
        x, y = _read_npz(path)
    else:
        try:
            x, y = np.load(path, allow_pickle=False), None
        except (OSError, EOFError, ValueError) as exc:
            raise ValueError(
                f"data: expected a readable .npy file, got {str(path)!r} ({exc})"
            ) from exc
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
            raise ValueError(
                f"input_shape: expected images of shape {tuple(input_shape)}, got {x.shape[1:]}"
            )
    return _in_memory(x, y, path.name, notes)


def _image_source(path: Path, input_shape: tuple[int, int, int] | None) -> _Source:
    from PIL import Image, UnidentifiedImageError

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    else:
        files = [path]
    if not files:
        raise ValueError(f"data: expected PNG/JPEG images in the folder {str(path)!r}, got none")

    def open_image(p: Path) -> Image.Image:
        try:
            img = Image.open(p)
            img.load()
            return img
        except (OSError, UnidentifiedImageError) as exc:
            raise ValueError(f"data: expected a readable image, got {str(p)!r} ({exc})") from exc

    if input_shape is None:
        first = open_image(files[0])
        channels = 1 if first.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
        shape = (channels, first.height, first.width)
    else:
        shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    if shape[0] not in (1, 3):
        raise ValueError(f"input_shape: expected 1 or 3 channels for images, got {shape}")
    notes: list[str] = []
    labels = [_LABEL.search(p.stem) for p in files]
    y = np.array([int(m.group(1)) for m in labels if m], dtype=np.int64)
    if len(y) != len(files):
        if len(y):
            notes.append("some image names lack a trailing _<label>: labels are unknown")
        y_opt: np.ndarray | None = None
    else:
        y_opt = y

    def take(pos: np.ndarray) -> np.ndarray:
        out = np.empty((len(pos), shape[1], shape[2], shape[0]), dtype=np.uint8)
        resized = 0
        for row, i in enumerate(pos):
            img = open_image(files[int(i)]).convert("L" if shape[0] == 1 else "RGB")
            if img.size != (shape[2], shape[1]):
                img = img.resize((shape[2], shape[1]), Image.Resampling.BILINEAR)
                resized += 1
            out[row] = np.asarray(img, dtype=np.uint8).reshape(shape[1], shape[2], shape[0])
        if resized:
            notes.append(f"{resized} image(s) resized to {shape[1]}x{shape[2]} (bilinear)")
        return out.transpose(0, 3, 1, 2)

    return _Source(len(files), take, y_opt, path.name, notes)


# -- selection and conversion ---------------------------------------------------------------
def _select(
    n: int, start: int, indices: IndicesArg, limit: int | None, name: str
) -> np.ndarray:
    """Source positions to load: ``start`` first, then ``indices``, then ``limit``."""
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"start: expected an integer >= 0, got {start!r}")
    if start > 0 and start >= n:
        raise ValueError(f"start: expected a position below the {n} images of {name}, got {start}")
    pos = np.arange(start, n, dtype=np.int64)
    if indices is not None:
        items = (
            indices.reshape(-1).tolist()
            if isinstance(indices, (torch.Tensor, np.ndarray))
            else list(indices)
        )
        if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in items):
            raise ValueError(f"indices: expected a list of integers, got {items[:5]!r}")
        idx = np.asarray(items, dtype=np.int64).reshape(-1)
        bad = idx[(idx < start) | (idx >= n)]
        if bad.size:
            raise ValueError(
                f"indices: expected positions in [{start}, {n}) of {name}, got {bad[:5].tolist()}"
            )
        pos = idx
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
            raise ValueError(f"limit: expected an integer >= 0, got {limit!r}")
        pos = pos[:limit]
    return pos


def _to_pixels(x: np.ndarray, notes: list[str]) -> torch.Tensor:
    """``(N, C, H, W)`` uint8 or float array → float32 tensor in ``[0, 1]``."""
    if x.dtype == np.uint8:
        if "uint8 input scaled by 1/255" not in notes:
            notes.append("uint8 input scaled by 1/255")
        return torch.from_numpy(x.astype(np.float32) / np.float32(255.0))
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"x: expected float values in [0, 1] or uint8 0..255, got dtype {x.dtype}")
    if x.size:
        if not np.isfinite(x).all():
            raise ValueError(
                f"x: expected finite values, got {int((~np.isfinite(x)).sum())} NaN/Inf"
            )
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"x: expected values in [0, 1] (or uint8 0..255), got range [{lo:g}, {hi:g}]"
            )
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _labels(y: np.ndarray | None, n: int) -> np.ndarray | None:
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (n,):
        raise ValueError(f"y: expected labels of shape ({n},), got {y.shape}")
    if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise ValueError(f"y: expected non-negative integer labels, got dtype {y.dtype}")
    return y.astype(np.int64)


def _open(
    spec: str | os.PathLike[str],
    root: str | os.PathLike[str] | None,
    input_shape: tuple[int, int, int] | None,
) -> _Source:
    text = os.fspath(spec)
    m = _SPEC.match(text)
    if m is not None:
        kind, split, folder = m.groups()
        return _mnist(split, folder, root) if kind == "mnist" else _cifar10(split, folder, root)
    path = Path(text).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix.lower() in _IMAGE_SUFFIXES):
        return _image_source(path, input_shape)
    if path.is_file() and path.suffix.lower() in (".npy", ".npz"):
        return _array_file(path, input_shape)
    if path.is_file():
        raise ValueError(f"data: expected {SPECS_HELP}; got the file {text!r} of unknown type")
    if ":" in text and os.sep not in text:
        raise ValueError(f"data: expected one of {SPECS_HELP}; got {text!r}")
    raise DataFileNotFoundError(
        f"data: expected an existing file or folder, got {text!r} (no such path)"
    )


def load_data(
    spec: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    indices: IndicesArg = None,
    start: int = 0,
    input_shape: tuple[int, int, int] | None = None,
) -> Dataset:
    """Load images (and labels) as a :class:`Dataset` in pixel space ``[0, 1]``.

    Args:
        spec: see the module docstring for the accepted forms.
        data_root: where the shared data lives (else ``$L0TRE_DATA``).
        limit: keep at most this many images (applied last).
        indices: positions in the source set to keep (each ``>= start``).
        start: skip the source's first ``start`` images (applied first).
        input_shape: ``(C, H, W)`` images must have; image folders are converted
            (grayscale/RGB, resized) to it.

    Raises:
        ValueError: unknown spec, missing/corrupt file, values outside ``[0, 1]``, NaN/Inf,
            out-of-range selection.
    """
    source = _open(spec, data_root, input_shape)
    pos = _select(source.n, start, indices, limit, source.name)
    raw = source.take(pos)
    notes = list(source.notes)
    x = _to_pixels(raw, notes)
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"input_shape: expected images of shape {tuple(input_shape)}, got {tuple(x.shape[1:])}"
        )
    y = _labels(source.y, source.n)
    return Dataset(
        x=x,
        y=torch.from_numpy(y[pos]) if y is not None else None,
        indices=torch.from_numpy(pos.copy()),
        name=source.name if source.name.startswith(("mnist", "cifar10")) else os.fspath(spec),
        notes=notes,
    )
