"""A PNG/JPEG image, or a folder of them (a label is read from a trailing ``_<int>`` in the name);
converted to grayscale or RGB and resized to the model's input shape when it is known.

``preprocess="imagenet"`` is the standard ImageNet evaluation transform: the shorter side resized
to 256 (bilinear, antialiased, the longer side ``int(256 · long / short)``), then the centre
224×224 crop (offsets ``round((size − 224) / 2)``), RGB. The per-channel normalisation
(:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`) is not applied to the pixels: it belongs in the
classifier (``Classifier(..., preprocessing=...)``), so the search works in pixel space ``[0, 1]``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..validate import Choice
from .source import Source

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_SUFFIXES", "ImagePreprocess", "imagenet_crop", "open_images"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESIZE, _CROP = 256, 224


class ImagePreprocess(Choice):
    """How image files become model inputs: ``none`` (the model's input shape, or the images'
    own size, which must then agree) or ``imagenet`` (resize 256, centre crop 224, RGB)."""

    NONE = "none"
    IMAGENET = "imagenet"

    @classmethod
    def argument(cls) -> str:
        return "preprocess"

    @classmethod
    def aliases(cls) -> dict[object, ImagePreprocess]:
        return {None: cls.NONE}


def imagenet_crop(img: Image.Image) -> Image.Image:
    """Resize the shorter side of ``img`` to 256 (bilinear) and cut the centre 224×224, RGB."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(_RESIZE * long / short)
    size = (_RESIZE, new_long) if w <= h else (new_long, _RESIZE)
    img = img.resize(size, Image.Resampling.BILINEAR)
    top = int(round((size[1] - _CROP) / 2.0))
    left = int(round((size[0] - _CROP) / 2.0))
    return img.crop((left, top, left + _CROP, top + _CROP))

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


def _size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of the image at ``path`` from its header (no decoding)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.size
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


def _shape(files: Sequence[Path], input_shape: tuple[int, int, int] | None,
           preprocess: ImagePreprocess) -> tuple[int, int, int]:
    """``(C, H, W)`` of the loaded images: ImageNet's crop, the model's, else the images' own
    (which must then all agree)."""
    if preprocess is ImagePreprocess.IMAGENET:
        shape = (3, _CROP, _CROP)
        if input_shape is not None and tuple(input_shape) != shape:
            raise ValueError(f"preprocess: 'imagenet' gives images of shape {shape}, but the model expects "
                             f"{tuple(input_shape)}")
    elif input_shape is None:
        first = _open_image(files[0])
        shape = (1 if first.mode in _GRAY_MODES else 3, first.height, first.width)
        for p in files[1:]:
            w, h = _size(p)
            if (h, w) != shape[1:]:
                raise ValueError(
                    f"data: expected images of one size, got {first.width}x{first.height} ({files[0].name}) and "
                    f"{w}x{h} ({p.name}); pass --preprocess imagenet (preprocess='imagenet') "
                    "or a model with a known input shape")
    else:
        shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    if shape[0] not in (1, 3):
        raise ValueError(f"input_shape: expected 1 or 3 channels for images, got {shape}")
    return shape


def open_images(path: Path, input_shape: tuple[int, int, int] | None, preprocess: object = None) -> Source:
    """One image file or a folder of images as a source (decoded lazily, on ``take``);
    ``preprocess``: ``None``/``"none"`` or ``"imagenet"`` (:class:`ImagePreprocess`).

    Raises:
        ValueError: no images, an unreadable image, or an input shape that is not 1 or 3 channels.
    """
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"data: expected PNG/JPEG images in the folder {str(path)!r}, got none")
    prep = ImagePreprocess.parse(preprocess)
    shape = _shape(files, input_shape, prep)
    notes: list[str] = []
    y = _labels(files, notes)

    def take(pos: np.ndarray) -> np.ndarray:
        """Decode the images at ``pos`` as uint8 ``(M, C, H, W)``."""
        out = np.empty((len(pos), shape[1], shape[2], shape[0]), dtype=np.uint8)
        resized = 0
        for row, i in enumerate(pos):
            img = _open_image(files[int(i)])
            if prep is ImagePreprocess.IMAGENET:
                img = imagenet_crop(img)
            img = img.convert("L" if shape[0] == 1 else "RGB")
            if img.size != (shape[2], shape[1]):
                img = img.resize((shape[2], shape[1]), Image.Resampling.BILINEAR)
                resized += 1
            out[row] = np.asarray(img, dtype=np.uint8).reshape(shape[1], shape[2], shape[0])
        if resized:
            notes.append(f"{resized} image(s) resized to {shape[1]}x{shape[2]} (bilinear)")
        return out.transpose(0, 3, 1, 2)

    if prep is ImagePreprocess.IMAGENET:
        notes.append("ImageNet preprocessing: resize 256, centre crop 224 (mean/std belong in the classifier)")
    return Source(len(files), take, y, path.name, notes)
