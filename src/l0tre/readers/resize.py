"""MATLAB's ``imresize`` default (bicubic with antialiasing) and the 14×14 MNIST sets built with it.

The paper's sDNN was trained and evaluated on MNIST resized to 14×14 in MATLAB. ``imresize``
resamples each dimension separately with Keys' cubic kernel (a = -0.5); when it shrinks by a
scale ``s < 1`` it widens the kernel to ``k(s·x)·s`` (width ``4 / s``: the antialiasing), maps
output pixel ``i`` (1-based) to input position ``i / s + (1 - 1 / s) / 2``, normalises each row of
weights to sum 1, and mirrors the image at its borders (symmetric padding). Rows are resized
before columns (the dimension with the smaller scale first; for equal scales, rows). The result
of a double image is not clipped by MATLAB; the 14×14 MNIST images here are clipped to
``[0, 1]``, as the paper's own 14×14 test image (``test_image.mat``, min 0, max 1) is.
"""

from __future__ import annotations

import os

import numpy as np

from .idx import open_mnist
from .source import Source

__all__ = ["cubic", "imresize", "open_mnist14", "resize_weights"]


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``), elementwise."""
    a = np.abs(x)
    a2, a3 = a * a, a * a * a
    near = (1.5 * a3 - 2.5 * a2 + 1.0) * (a <= 1)
    far = (-0.5 * a3 + 2.5 * a2 - 4.0 * a + 2.0) * ((a > 1) & (a <= 2))
    return near + far


def resize_weights(n_in: int, n_out: int, *, antialias: bool = True) -> np.ndarray:
    """The float64 matrix ``(n_out, n_in)`` that resizes one dimension as ``imresize`` does.

    Raises:
        ValueError: a size below 1.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"size: expected sizes >= 1, got n_in={n_in}, n_out={n_out}")
    scale = n_out / n_in
    width = 4.0 / scale if (antialias and scale < 1) else 4.0
    out = np.arange(1, n_out + 1, dtype=np.float64)
    centre = out / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(centre - width / 2.0)
    taps = int(np.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based input positions (n_out, taps)
    dist = centre[:, None] - idx
    w = scale * cubic(scale * dist) if (antialias and scale < 1) else cubic(dist)
    w = w / w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in - 1, -1, -1)])  # symmetric padding
    cols = mirror[np.mod(idx.astype(np.int64) - 1, 2 * n_in)]
    matrix = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(matrix, (np.repeat(np.arange(n_out), taps), cols.reshape(-1)), w.reshape(-1))
    return matrix


def imresize(x: np.ndarray, size: tuple[int, int], *, antialias: bool = True) -> np.ndarray:
    """Resize the last two dimensions of ``x`` (``(..., H, W)``) to ``size = (h, w)`` as MATLAB's
    ``imresize(x, size)`` does for a double image (bicubic; antialiasing when shrinking).

    Returns float64 ``(..., h, w)``, not clipped.
    """
    if x.ndim < 2:
        raise ValueError(f"x: expected an array (..., H, W), got shape {x.shape}")
    h, w = size
    rows = resize_weights(x.shape[-2], h, antialias=antialias)
    cols = resize_weights(x.shape[-1], w, antialias=antialias)
    data = np.asarray(x, dtype=np.float64)
    if h / x.shape[-2] <= w / x.shape[-1]:  # the dimension with the smaller scale first
        return np.einsum("ih,...hw,jw->...ij", rows, data, cols, optimize=True)
    tmp = np.einsum("...hw,jw->...hj", data, cols)
    return np.einsum("ih,...hj->...ij", rows, tmp)


def _mnist14_take(base: Source) -> Source:
    """``base`` (uint8 ``(N, 1, 28, 28)``) resized on demand to float32 ``(N, 1, 14, 14)`` in ``[0, 1]``."""

    def take(pos: np.ndarray) -> np.ndarray:
        raw = base.take(pos).astype(np.float64) / 255.0
        return np.clip(imresize(raw, (14, 14)), 0.0, 1.0).astype(np.float32)

    name = base.name.replace("mnist:", "mnist14:", 1)
    note = "resized 28x28 -> 14x14 as MATLAB imresize (bicubic, antialiasing), clipped to [0, 1]"
    return Source(base.n, take, base.y, name, [*base.notes, note], base.embedded)


def open_mnist14(split: str, folder: str | None, root: str | os.PathLike[str] | None) -> Source:
    """``mnist14:SPLIT``: the MNIST images of :func:`~.idx.open_mnist` resized to 14×14 (the paper's sDNN data).

    Raises:
        DataFileNotFoundError: the IDX images are missing.
        ValueError: they are corrupt or of the wrong shape.
    """
    return _mnist14_take(open_mnist(split, folder, root))
