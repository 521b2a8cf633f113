"""Figures of a model comparison (paper Figs. 8–9, plus the pairwise differences and accuracy
against robustness), drawn from a :class:`~.result.CompareResult`. matplotlib is imported
lazily (through :func:`~..study.figures.new_figure`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...figures import new_figure, save_png
from ..study.figures import CERTIFIED, ESTIMATE, LOWER, UPPER
from .result import CompareResult

__all__ = ["COMPARE_FIGURES", "draw_compare"]

COMPARE_FIGURES = ("fig8_bounds.png", "fig9_spread.png", "pairwise.png", "accuracy.png")
_LEVEL_COLOURS = ("#1f6fb4", "#e6550d", "#31a354", "#756bb1", "#636363")


def _levels(comp: CompareResult) -> list[int]:
    return sorted({r.t for recs in comp.levels.values() for r in recs})


def _offsets(k: int) -> np.ndarray:
    return (np.arange(k) - (k - 1) / 2) * (0.6 / max(1, k))


def _models_axis(ax: Any, names: list[str]) -> None:
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30 if max(len(n) for n in names) > 8 else 0, ha="right"
                       if max(len(n) for n in names) > 8 else "center", fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.grid(axis="y", alpha=0.3)


def fig_bounds(comp: CompareResult, path: Path) -> Path:
    """Fig. 8: global lower / upper bounds and estimate per model and level."""
    fig = new_figure(max(6.0, 1.1 * len(comp.names) + 2.5), 4.2)
    ax = fig.subplots()
    levels = _levels(comp)
    for j, (t, off) in enumerate(zip(levels, _offsets(len(levels)), strict=True)):
        colour = _LEVEL_COLOURS[j % len(_LEVEL_COLOURS)]
        for i, name in enumerate(comp.names):
            r = comp.record(name, t)
            if r is None:
                continue
            ax.vlines(i + off, r.global_lower, r.global_upper, color=colour, linewidth=2)
            ax.plot(i + off, r.global_upper, "v", color=UPPER, markersize=5)
            ax.plot(i + off, r.global_lower, "^", color=LOWER, markersize=5)
            ax.plot(i + off, r.estimate, "o", color=colour, markersize=6,
                    label=f"t = {t} ({int(r.lower.numel())} inputs): estimate, bounds" if i == 0 else None)
            ax.annotate(f"{r.estimate:.2f}", (i + off, r.global_upper), textcoords="offset points", xytext=(0, 4),
                        ha="center", fontsize=7)
            if r.certified_lower is not None:
                ax.plot(i + off, float(r.certified_lower.double().mean()), "s", markerfacecolor="none",
                        color=CERTIFIED, label="certified lower bound" if i == 0 and j == 0 else None)
    _models_axis(ax, comp.names)
    ax.set_ylabel("global L0 robustness (mean over inputs)")
    ax.set_ylim(bottom=0)
    ax.margins(y=0.12)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("Global robustness per model: lower ▲, upper ▼, estimate ● (paper Fig. 8)", fontsize=10)
    return save_png(fig, path)


def fig_spread(comp: CompareResult, path: Path) -> Path:
    """Fig. 9: mean ± standard deviation of the per-input estimates and radii."""
    rows = comp.table()
    fig = new_figure(max(8.0, 1.6 * len(comp.names) + 3.0), 4.0)
    axes = fig.subplots(1, 2)
    levels = _levels(comp)
    for ax, key, title in ((axes[0], "estimate", "per-input estimate of d_m"),
                           (axes[1], "radius", "per-input uncertainty radius")):
        for j, (t, off) in enumerate(zip(levels, _offsets(len(levels)), strict=True)):
            sel = {r["model"]: r for r in rows if r["t"] == t}
            xs = [i + off for i, n in enumerate(comp.names) if n in sel]
            means = np.array([sel[n][f"{key}_mean"] for n in comp.names if n in sel])
            stds = np.array([sel[n][f"{key}_std"] for n in comp.names if n in sel])
            colour = _LEVEL_COLOURS[j % len(_LEVEL_COLOURS)]
            ax.errorbar(xs, means, yerr=[np.minimum(stds, means), stds], fmt="o", capsize=3, color=colour,
                        label=f"t = {t}: mean ± std")
            medians = [_median(comp, n, t, key) for n in comp.names if n in sel]
            ax.plot(xs, medians, "x", color=colour, markersize=7, label=f"t = {t}: median")
        _models_axis(ax, comp.names)
        ax.set_title(f"{title}: mean ± std (bars cut at 0), median ×", fontsize=10)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("L0 radius")
    fig.suptitle("Spread over the inputs (paper Fig. 9)", fontsize=11)
    return save_png(fig, path)


def _median(comp: CompareResult, name: str, t: int, key: str) -> float:
    """Median of the per-input estimates (``key == "estimate"``) or radii of model ``name`` at ``t``."""
    r = comp.record(name, t)
    if r is None:
        return float("nan")
    both = (r.lower + r.upper) if key == "estimate" else (r.upper - r.lower)
    return float(np.median(both.double().numpy() / 2))


def fig_pairwise(comp: CompareResult, path: Path) -> Path:
    """Mean difference of the per-input estimates (row − column) at the last level every model
    completed, in ranking order; ``*``: significant after Holm's correction."""
    done = comp.complete_levels()
    fig = new_figure(max(5.0, 0.8 * len(comp.names) + 2.5), max(4.0, 0.7 * len(comp.names) + 1.5))
    ax = fig.subplots()
    if not done:
        ax.text(0.5, 0.5, "no level completed by every model", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return save_png(fig, path)
    rank = comp.ranking(done[-1])
    k = len(rank.order)
    diff = np.zeros((k, k))
    star = np.zeros((k, k), dtype=bool)
    pos = {n: i for i, n in enumerate(rank.order)}
    for p in rank.pairs:
        i, j = pos[p.a], pos[p.b]
        diff[i, j], diff[j, i] = p.mean, -p.mean
        star[i, j] = star[j, i] = p.significant()
    lim = float(np.abs(diff).max()) or 1.0
    im = ax.imshow(diff, cmap="RdBu", vmin=-lim, vmax=lim)
    for i in range(k):
        for j in range(k):
            if i != j:
                ax.text(j, i, f"{diff[i, j]:+.2f}{'*' if star[i, j] else ''}", ha="center", va="center", fontsize=7,
                        color="white" if abs(diff[i, j]) > 0.6 * lim else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(rank.order, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(rank.order, fontsize=8)
    fig.colorbar(im, ax=ax, label="mean difference of estimates (row − column)")
    ax.set_title(f"t = {rank.t}, {rank.inputs} inputs: * = significant "
                 f"({100 * comp.confidence:.0f}% paired t, Holm)", fontsize=9)
    return save_png(fig, path)


def fig_accuracy(comp: CompareResult, path: Path, accuracy: list[float | None] | None = None) -> Path:
    """Accuracy against the global robustness estimate at the last common level (is accuracy a
    proxy for robustness?)."""
    acc = accuracy if accuracy is not None else comp.accuracy
    done = comp.complete_levels()
    fig = new_figure(6.0, 4.2)
    ax = fig.subplots()
    if not done or all(a is None for a in acc):
        ax.text(0.5, 0.5, "no labels or no common level", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return save_png(fig, path)
    t = done[-1]
    for name, a in zip(comp.names, acc, strict=True):
        r = comp.record(name, t)
        if a is None or r is None:
            continue
        ax.errorbar(100 * a, r.estimate, yerr=[[r.estimate - r.global_lower], [r.global_upper - r.estimate]],
                    fmt="o", color=ESTIMATE, capsize=3)
        ax.annotate(name, (100 * a, r.estimate), textcoords="offset points", xytext=(5, 3), fontsize=8)
    ax.set_xlabel("accuracy (%)")
    ax.set_ylabel(f"global robustness estimate at t = {t} (bars: bounds)")
    ax.grid(alpha=0.3)
    ax.margins(x=0.2, y=0.15)
    ax.set_title("Accuracy against robustness", fontsize=10)
    return save_png(fig, path)


def draw_compare(comp: CompareResult, directory: Path, accuracy: list[float | None] | None = None) -> list[Path]:
    """Draw :data:`COMPARE_FIGURES` into ``directory`` (``accuracy``: per model, e.g. on the
    whole test set; default the accuracy on the compared inputs)."""
    return [fig_bounds(comp, directory / COMPARE_FIGURES[0]), fig_spread(comp, directory / COMPARE_FIGURES[1]),
            fig_pairwise(comp, directory / COMPARE_FIGURES[2]),
            fig_accuracy(comp, directory / COMPARE_FIGURES[3], accuracy)]
