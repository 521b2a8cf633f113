"""PNG figures of a saliency run: per image ``image | heat map | flipping pixels`` and a grid.

The heat map shows the raw score drop (``margin`` or ``confidence`` units, stated on the colour
bar); its colour range is the map's own minimum and maximum, so nothing is clipped (the figure
says so). matplotlib is imported here only, lazily, and drawn on an Agg canvas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...figures import new_figure, save_png

__all__ = ["draw_grid", "draw_image"]

_FLIP = (0.86, 0.08, 0.10)
_SPARSE = 0.1  # below this fraction of searched pixels the heat map draws squares
_MARK_ABOVE = 64  # images taller than this get rings around flipping pixels


def _inferno() -> Any:
    """The heat map's colour map, not-searched pixels (NaN) in light grey."""
    import matplotlib

    cmap = matplotlib.colormaps["inferno"].copy()
    cmap.set_bad((0.85, 0.85, 0.85))
    return cmap




def _picture(x: np.ndarray, bounds: tuple[float, float]) -> tuple[np.ndarray, str | None]:
    """``(C, H, W)`` in ``bounds`` → an ``imshow`` image and its colour map."""
    lo, hi = bounds
    scaled = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return (scaled.transpose(1, 2, 0), None) if scaled.shape[0] == 3 else (scaled[0], "gray")


def _range(sens: np.ndarray) -> tuple[float, float]:
    """The colour range: the finite values' own minimum and maximum (0 included)."""
    finite = sens[np.isfinite(sens)]
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    hi = max(0.0, float(finite.max())) if finite.size else 0.0
    return lo, (hi if hi > lo else lo + 1e-12)


def _flip_overlay(img: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """RGB ``(H, W, 3)``: the image faded to light grey, flipping pixels in red."""
    grey = img.mean(2) if img.ndim == 3 else img
    out = np.repeat((0.93 - 0.3 * grey)[:, :, None], 3, axis=2)
    out[flips] = _FLIP
    return out


def _panels(fig: Any, axes: Any, x: np.ndarray, sens: np.ndarray, flips: np.ndarray, bounds: tuple[float, float],
            unit: str, title: str) -> None:
    """Draw one image's three panels on ``axes`` (3 axes)."""
    img, cmap = _picture(x, bounds)
    axes[0].imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title(title, fontsize=8)
    lo, hi = _range(sens)
    searched = np.isfinite(sens)
    if searched.mean() < _SPARSE:  # a few searched pixels of a large image: squares large enough to see
        axes[1].imshow(np.full(sens.shape, 0.85), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        hh, ww = np.nonzero(searched)
        im = axes[1].scatter(ww, hh, c=sens[searched], cmap="inferno", vmin=lo, vmax=hi, s=9, marker="s",
                             linewidths=0)
    else:
        cmap = _inferno()
        im = axes[1].imshow(np.ma.masked_invalid(sens), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
    axes[1].set_title("sensitivity (no clipping)", fontsize=8)
    bar = fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02)
    bar.set_label(f"{unit} drop (raw)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    axes[2].imshow(_flip_overlay(img, flips), interpolation="nearest")
    if flips.shape[0] > _MARK_ABOVE and flips.any():  # single pixels of a large image: ring them too
        fh, fw = np.nonzero(flips)
        axes[2].scatter(fw, fh, s=40, facecolors="none", edgecolors=[_FLIP], linewidths=1.0)
    axes[2].set_title(f"flipping pixels: {int(flips.sum())}", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


def draw_image(path: Path, x: np.ndarray, sens: np.ndarray, flips: np.ndarray, bounds: tuple[float, float],
               unit: str, title: str) -> Path:
    """One image: ``x`` ``(C, H, W)``, ``sens`` and ``flips`` ``(H, W)`` (NaN: not evaluated)."""
    fig = new_figure(9.0, 3.2)
    axes = fig.subplots(1, 3)
    _panels(fig, axes, x, sens, flips, bounds, unit, title)
    if np.isnan(sens).any():
        fig.suptitle("light grey in the heat map: pixels not searched (pixel selection)", fontsize=8)
    return save_png(fig, path)


def draw_grid(path: Path, x: np.ndarray, sens: np.ndarray, flips: np.ndarray, bounds: tuple[float, float],
              unit: str, titles: list[str]) -> Path:
    """Rows of images ``x`` ``(M, C, H, W)`` with their maps ``(M, H, W)`` (each its own range)."""
    m = int(x.shape[0])
    fig = new_figure(9.0, 2.6 * m)
    axes = np.asarray(fig.subplots(m, 3)).reshape(m, 3)
    for i in range(m):
        _panels(fig, axes[i], x[i], sens[i], flips[i], bounds, unit, titles[i])
    return save_png(fig, path)
