"""MNIST in IDX files (``mnist:test``, ``mnist:train``, ``mnist:SPLIT@DIR``), and the 100 test
images embedded in the package when no data root is set."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ..paths import ENV_VAR, DataFileNotFoundError, data_root, embedded_file
from .source import Source, in_memory

__all__ = ["EMBEDDED_NOTE", "open_mnist", "read_idx"]

EMBEDDED_NOTE = "no data root set: using the 100 MNIST test images embedded in the package"


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) holding unsigned bytes.

    Raises:
        ValueError: unreadable, not an IDX file of unsigned bytes, or of the wrong length.
    """
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


def _embedded(split: str) -> Source:
    """The first 100 MNIST test images shipped in the package."""
    name = f"mnist:{split}"
    if split != "test":
        raise DataFileNotFoundError(
            f"data {name!r}: needs the MNIST IDX files under <data root>/mnist/; pass "
            f"--data-root DIR / data_root=DIR or set {ENV_VAR}=DIR (only the first 100 "
            "mnist:test images are embedded)"
        )
    with np.load(embedded_file("mnist_test_100.npz"), allow_pickle=False) as z:
        x_emb, y_emb = z["x"][:, None], z["y"].astype(np.int64)
    source = in_memory(x_emb, y_emb, f"{name} (embedded 100)", [EMBEDDED_NOTE])
    source.embedded = True
    return source


def open_mnist(split: str, folder: str | None, root: str | os.PathLike[str] | None) -> Source:
    """``mnist:SPLIT`` from ``folder``, else from ``<data root>/mnist/``, else (test split only)
    the embedded images.

    Raises:
        DataFileNotFoundError: the IDX images are missing.
        ValueError: they are corrupt or of the wrong shape.
    """
    prefix = "t10k" if split == "test" else "train"
    name = f"mnist:{split}"
    if folder is not None:
        base = Path(folder).expanduser()
    else:
        found = data_root(root)
        if found is None:
            return _embedded(split)
        base = found / "mnist"

    def find(kind: str) -> Path | None:
        """The (gzipped or plain) IDX file of ``kind`` in ``base``, if any."""
        stem = f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        return next((base / c for c in (f"{stem}.gz", stem) if (base / c).is_file()), None)

    images = find("images")
    if images is None:
        raise DataFileNotFoundError(
            f"data {name!r}: expected {prefix}-images-idx3-ubyte.gz in {str(base)!r}, got no such file"
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
    return in_memory(x[:, None], y, name, notes)
