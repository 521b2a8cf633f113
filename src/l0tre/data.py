"""Data loading: named data sets, image folders and ``.npy``/``.npz`` arrays.

Every loader returns a :class:`Dataset` with images ``x`` as float32 ``(N, C, H, W)`` in
``[0, 1]`` (pixel space, the units the engine and the user work in). The readers of each kind
of source live in :mod:`l0tre.readers`; this module selects and converts.

Specs accepted by :func:`load_data`:

* ``mnist:test`` / ``mnist:train`` — IDX files under ``<data root>/mnist/`` (or
  ``mnist:test@DIR``). With no data root, ``mnist:test`` falls back to the first 100
  test images embedded in the package, with an :class:`EmbeddedDataWarning`.
* ``mnist14:test`` / ``mnist14:train`` — the same images resized to 14×14 as MATLAB's ``imresize``
  does by default (the paper's sDNN data; :mod:`l0tre.readers.resize`).
* ``cifar10:test`` — ``<data root>/cifar10/cifar10_test_first100.npz`` (the first 100
  test images); ``cifar10:test@DIR`` / ``cifar10:train@DIR`` read the official
  ``cifar-10-batches-py`` pickles in ``DIR``.
* a folder of PNG/JPEG images (a label is read from a trailing ``_<int>`` in the name);
* a ``.npy`` file (``x`` only) or a ``.npz`` file (``x`` and optional ``y``).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .paths import ENV_VAR, DataFileNotFoundError
from .readers import IMAGE_SUFFIXES, Source, open_array_file, open_cifar10, open_images, open_mnist, read_idx
from .readers.resize import open_mnist14

__all__ = ["SPECS_HELP", "Dataset", "EmbeddedDataWarning", "load_data", "read_idx"]

_SPEC = re.compile(r"^(mnist|mnist14|cifar10):(train|test)(?:@(.+))?$")
IndicesArg = Sequence[int] | np.ndarray | torch.Tensor | None
SPECS_HELP = (
    "mnist:test, mnist:train, mnist14:test, mnist14:train, cifar10:test, cifar10:test@DIR, cifar10:train@DIR, "
    "an image folder, a .npy or .npz file"
)


class EmbeddedDataWarning(UserWarning):
    """``load_data("mnist:test")`` found no data root and returned the 100 MNIST test images
    embedded in the package (not the full test set)."""


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
        """Number of images."""
        return int(self.x.shape[0])


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
    """``y`` checked and converted to int64 ``(n,)`` labels (``None`` stays ``None``)."""
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
    preprocess: object = None,
) -> Source:
    """The source a spec names (see the module docstring)."""
    text = os.fspath(spec)
    m = _SPEC.match(text)
    if m is not None:
        kind, split, folder = m.groups()
        if kind == "mnist14":
            return open_mnist14(split, folder, root)
        return open_mnist(split, folder, root) if kind == "mnist" else open_cifar10(split, folder, root)
    path = Path(text).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES):
        return open_images(path, input_shape, preprocess)
    if preprocess not in (None, "none"):
        raise ValueError(f"preprocess: expected image files (PNG/JPEG) for {preprocess!r}, got {text!r}")
    if path.is_file() and path.suffix.lower() in (".npy", ".npz"):
        return open_array_file(path, input_shape)
    if path.is_file():
        raise ValueError(f"data: expected {SPECS_HELP}; got the file {text!r} of unknown type")
    if ":" in text and os.sep not in text:
        raise ValueError(f"data: expected one of {SPECS_HELP}; got {text!r}")
    raise DataFileNotFoundError(f"data: expected an existing file or folder, got {text!r} (no such path)")


def _warn_embedded(spec: str | os.PathLike[str]) -> None:
    """The :class:`EmbeddedDataWarning`, attributed to the caller of :func:`load_data`."""
    warnings.warn(EmbeddedDataWarning(
        f"load_data({os.fspath(spec)!r}): no data root is set, so the embedded fallback is used: the "
        "first 100 MNIST test images shipped in the package, not the full test set; pass "
        f"data_root=DIR or set {ENV_VAR}=DIR to read the full set"), stacklevel=3)


def load_data(
    spec: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    indices: IndicesArg = None,
    start: int = 0,
    input_shape: tuple[int, int, int] | None = None,
    preprocess: str | None = None,
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
        preprocess: ``None`` or ``"imagenet"`` for image files: resize 256, centre crop 224, RGB
            (:mod:`l0tre.readers.images`; the mean/std go into the classifier, not the pixels).

    Warns:
        EmbeddedDataWarning: ``mnist:test`` without a data root: the 100 embedded images.

    Raises:
        ValueError: unknown spec, missing/corrupt file, values outside ``[0, 1]``, NaN/Inf,
            out-of-range selection.
    """
    source = _open(spec, data_root, input_shape, preprocess)
    if source.embedded:
        _warn_embedded(spec)
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
