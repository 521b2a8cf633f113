"""A PNG/JPEG image, or a folder of them (a label is read from a trailing ``_<int>`` in the name);
converted to grayscale or RGB and resized to the model's input shape when it is known."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .source import Source

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["IMAGE_SUFFIXES", "open_images"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
_LABEL = re.compile(r"_(\d+)$")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _open_image(path: Path) -> Image.Image:
    """The decoded image at ``path``; a ``ValueError`` when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
        return img
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"data: expected a readable image, got {str(path)!r} ({exc})") from exc


def _labels(files: Sequence[Path], notes: list[str]) -> np.ndarray | None:
    """The labels in the file names, or ``None`` unless every name has one."""
    found = [_LABEL.search(p.stem) for p in files]
    y = np.array([int(m.group(1)) for m in found if m], dtype=np.int64)
    if len(y) == len(files):
        return y
    if len(y):
        notes.append("some image names lack a trailing _<label>: labels are unknown")
    return None


def _shape(files: Sequence[Path], input_shape: tuple[int, int, int] | None) -> tuple[int, int, int]:
    """``(C, H, W)`` of the loaded images: the model's, else the first image's."""
    if input_shape is None:
        first = _open_image(files[0])
        shape = (1 if first.mode in _GRAY_MODES else 3, first.height, first.width)
    else:
        shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    if shape[0] not in (1, 3):
        raise ValueError(f"input_shape: expected 1 or 3 channels for images, got {shape}")
    return shape


def open_images(path: Path, input_shape: tuple[int, int, int] | None) -> Source:
    """One image file or a folder of images as a source (decoded lazily, on ``take``).

    Raises:
        ValueError: no images, an unreadable image, or an input shape that is not 1 or 3 channels.
    """
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"data: expected PNG/JPEG images in the folder {str(path)!r}, got none")
    shape = _shape(files, input_shape)
    notes: list[str] = []
    y = _labels(files, notes)

    def take(pos: np.ndarray) -> np.ndarray:
        """Decode the images at ``pos`` as uint8 ``(M, C, H, W)``."""
        out = np.empty((len(pos), shape[1], shape[2], shape[0]), dtype=np.uint8)
        resized = 0
        for row, i in enumerate(pos):
            img = _open_image(files[int(i)]).convert("L" if shape[0] == 1 else "RGB")
            if img.size != (shape[2], shape[1]):
                img = img.resize((shape[2], shape[1]), Image.Resampling.BILINEAR)
                resized += 1
            out[row] = np.asarray(img, dtype=np.uint8).reshape(shape[1], shape[2], shape[0])
        if resized:
            notes.append(f"{resized} image(s) resized to {shape[1]}x{shape[2]} (bilinear)")
        return out.transpose(0, 3, 1, 2)

    return Source(len(files), take, y, path.name, notes)
