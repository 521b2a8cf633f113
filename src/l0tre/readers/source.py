"""A data source before selection: ``n`` images, fetched by position."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Source", "in_memory"]


@dataclass
class Source:
    """A data source before selection.

    Attributes:
        n: number of images.
        take: positions ``(M,)`` → images ``(M, C, H, W)`` (uint8 or float).
        y: labels ``(n,)``, or ``None`` when the source has none.
        name: what was opened, for :attr:`l0tre.data.Dataset.name`.
        notes: conversions and fallbacks applied (``take`` may add some).
        embedded: the images are the ones embedded in the package (no data root was set).
    """

    n: int
    take: Callable[[np.ndarray], np.ndarray]
    y: np.ndarray | None
    name: str
    notes: list[str]
    embedded: bool = False


def in_memory(x: np.ndarray, y: np.ndarray | None, name: str, notes: list[str]) -> Source:
    """A :class:`Source` over the array ``x`` ``(N, C, H, W)``."""
    return Source(int(x.shape[0]), lambda pos: x[pos], y, name, notes)
