"""The PNG figures of ``l0tre coverage`` (paper Fig. 16, 17 and 7, and per-layer coverage).

matplotlib is imported here only, lazily, through the Agg canvas (no pyplot); every PNG is
written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ...figures import new_figure, save_png
from .result import CoverageResult

__all__ = ["FIGURES", "MAX_TESTS", "draw_coverage_figures"]

FIGURES = ("coverage_l0.png", "distances.png", "tests.png", "per_layer.png")
MAX_TESTS = 8
_BEFORE, _AFTER, _DEAD = "#8aa6c1", "#1f6fb4", "#999999"




def _coverage_l0(res: CoverageResult, path: Path) -> Path:
    """Coverage (%) against the largest L0 allowed (paper Fig. 16); L0 = 0 is the seeds."""
    fig = new_figure(5.2, 3.4)
    ax = fig.add_subplot()
    t_max = max([int(res.l0.max())] if res.l0.numel() else [0])
    found = res.test_of[res.test_of >= 0]
    l0_of = res.l0[found] if found.numel() else torch.zeros(0, dtype=torch.int64)
    base = int(res.before.sum())
    steps = list(range(0, t_max + 1))
    pct = [100.0 * (base + int((l0_of <= t).sum())) / max(1, res.total) for t in steps]
    ax.step(steps, pct, where="post", color=_AFTER, marker="o", label=f"{res.neurons} coverage")
    reach = 100.0 * (1 - float(res.unreachable.float().mean())) if res.total else 100.0
    if reach < 100.0:
        ax.axhline(reach, color=_DEAD, ls="--", label=f"not proven unreachable ({reach:.2f} %)")
    for t, p in zip(steps, pct, strict=True):
        ax.annotate(f"{p:.2f}", (t, p), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xlabel("L0 distance (pixels changed) of a test from its seed, at most")
    ax.set_ylabel("neurons covered (%)")
    ax.set_xticks(steps)
    lo = min(pct) if pct else 0.0
    ax.set_ylim(max(0.0, lo - 0.1 * (100.5 - lo) - 0.5), 100.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"Coverage vs L0 ({res.total} {res.neurons} neurons, threshold {res.threshold:g})", fontsize=9)
    return save_png(fig, path)


def _distances(res: CoverageResult, path: Path) -> Path:
    """Histogram of the tests' L0 distances (paper Fig. 17)."""
    fig = new_figure(5.2, 3.2)
    ax = fig.add_subplot()
    if res.l0.numel():
        top = int(res.l0.max())
        counts = np.bincount(res.l0.numpy(), minlength=top + 1)[1:]
        ax.bar(range(1, top + 1), counts, color=_AFTER)
        ax.set_xticks(range(1, top + 1))
        for t, c in enumerate(counts, start=1):
            ax.annotate(str(int(c)), (t, c), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
    else:
        ax.text(0.5, 0.5, "no tests generated", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("L0 distance to the seed (pixels changed)")
    ax.set_ylabel("generated tests")
    ax.set_title(f"{int(res.l0.numel())} tests, mean L0 "
                 f"{float(res.l0.float().mean()) if res.l0.numel() else float('nan'):.2f}", fontsize=9)
    return save_png(fig, path)


def _image(x: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, str | None]:
    scaled = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return (scaled.transpose(1, 2, 0), None) if scaled.shape[0] == 3 else (scaled.mean(0), "gray")


def _pick(res: CoverageResult) -> list[int]:
    """Up to :data:`MAX_TESTS` tests to show: label changes first, then larger L0, one per seed
    before a seed repeats."""
    order = sorted(range(int(res.seed.numel())),
                   key=lambda j: (bool(res.label[j] == res.seed_label[j]), -int(res.l0[j]), j))
    seen: set[int] = set()
    first: list[int] = []
    for j in order:
        if int(res.seed[j]) not in seen:
            seen.add(int(res.seed[j]))
            first.append(j)
    rest = [j for j in order if j not in set(first)]
    return (first + rest)[:MAX_TESTS]


def _tests(res: CoverageResult, seeds: torch.Tensor, bounds: tuple[float, float], path: Path) -> Path:
    """Seed | test | changed pixels, with the neuron and the labels (paper Fig. 7)."""
    shown = _pick(res)
    k = len(shown)
    rows = max(1, math.ceil(k / 2))
    fig = new_figure(2 * 3 * 1.7, rows * 1.9 + 0.4)
    axes = np.atleast_2d(fig.subplots(rows, 6, squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    if k == 0:
        axes[0, 0].text(0, 0.5, "no tests generated", fontsize=10)
    for i, j in enumerate(shown):
        r, c = divmod(i, 2)
        s = int(res.seed[j])
        x0, xt = seeds[s].numpy().astype(float), res.x[j].numpy().astype(float)
        img0, cmap = _image(x0, *bounds)
        imgt, _ = _image(xt, *bounds)
        changed = (xt != x0).any(0)
        diff = np.full((*changed.shape, 3), 0.93) - 0.25 * (img0 if img0.ndim == 2 else img0.mean(2))[..., None]
        diff[changed & ((xt - x0).mean(0) >= 0)] = (0.84, 0.10, 0.11)
        diff[changed & ((xt - x0).mean(0) < 0)] = (0.13, 0.35, 0.80)
        cov = res.covered_by(j)
        name = res.describe(int(cov[0])) + (f" +{cov.numel() - 1}" if cov.numel() > 1 else "")
        panels = ((img0, cmap, f"seed #{s}: label {int(res.seed_label[j])}"),
                  (imgt, cmap, f"test: label {int(res.label[j])}"), (diff, None, f"L0 = {int(res.l0[j])}; {name}"))
        for q, (img, cm, title) in enumerate(panels):
            ax = axes[r, 3 * c + q]
            ax.set_axis_on()
            ax.imshow(img, cmap=cm, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=7, color="#c8312b" if q == 1 and res.label[j] != res.seed_label[j] else "k")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"Generated tests ({k} of {int(res.seed.numel())}): seed | test | changed pixels "
                 "(red brighter, blue darker) and the neuron it activates", fontsize=9)
    return save_png(fig, path)


def _per_layer(res: CoverageResult, path: Path) -> Path:
    """Coverage per hidden layer: seeds, after the search, and proven unreachable."""
    rows = res.per_layer()
    fig = new_figure(max(5.0, 0.45 * len(rows) + 2.0), 3.6)
    ax = fig.add_subplot()
    idx = np.arange(len(rows))
    n = np.array([r["neurons"] for r in rows], dtype=float)
    ax.bar(idx - 0.27, 100 * np.array([r["before"] for r in rows]) / n, 0.27, color=_BEFORE, label="seeds")
    ax.bar(idx, 100 * np.array([r["after"] for r in rows]) / n, 0.27, color=_AFTER, label="seeds + tests")
    ax.bar(idx + 0.27, 100 * np.array([r["unreachable"] for r in rows]) / n, 0.27, color=_DEAD,
           label="proven unreachable")
    ax.set_xticks(idx)
    ax.set_xticklabels([f"{r['layer']}\n({r['neurons']})" if r["layer"].startswith("relu") else
                        f"relu {r['layer']}\n({r['neurons']})" for r in rows], fontsize=7,
                       rotation=90 if len(rows) > 8 else 0)
    ax.set_ylabel("neurons (%)")
    ax.set_ylim(0, 118)
    ax.set_yticks(range(0, 101, 20))
    ax.legend(fontsize=7, loc="upper center", ncol=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Coverage per hidden layer ({res.neurons} neurons; layer name and count)", fontsize=9)
    return save_png(fig, path)


def draw_coverage_figures(res: CoverageResult, seeds: torch.Tensor, bounds: tuple[float, float],
                          directory: Path) -> list[Path]:
    """Draw :data:`FIGURES` into ``directory``; returns their paths."""
    return [_coverage_l0(res, directory / FIGURES[0]), _distances(res, directory / FIGURES[1]),
            _tests(res, seeds.detach().cpu(), bounds, directory / FIGURES[2]),
            _per_layer(res, directory / FIGURES[3])]
