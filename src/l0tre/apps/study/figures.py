"""Figures of case study 1 (paper Figs. 1–2), drawn from a :class:`~.core.StudyResult`.

matplotlib is imported lazily, inside the functions, and drawn through the Agg canvas (no pyplot,
no global backend); every PNG is written atomically. :func:`new_figure` and :func:`save_png` are
shared with the comparison's figures.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...figures import new_figure, save_png

if TYPE_CHECKING:
    import torch

    from .core import StudyResult

__all__ = ["STUDY_FIGURES", "LOWER", "UPPER", "ESTIMATE", "CERTIFIED", "draw_study"]

STUDY_FIGURES = ("fig1a_input.png", "fig1b_global.png", "fig1c_time.png", "fig2_inputs.png")
LOWER, UPPER, ESTIMATE, CERTIFIED, CONVERGED = "#1f6fb4", "#c8312b", "#2e9a3a", "#8e44ad", "#222222"




def _bounds_panel(ax: Any, ts: list[int], lo: np.ndarray, up: np.ndarray, cert: np.ndarray | None) -> None:
    """Lower, upper, estimate (and certified lower) over the levels ``ts``."""
    est = (lo + up) / 2
    ax.fill_between(ts, lo, up, color=ESTIMATE, alpha=0.12, linewidth=0)
    ax.plot(ts, up, "v-", color=UPPER, label="upper bound")
    ax.plot(ts, est, "o--", color=ESTIMATE, label="estimate")
    ax.plot(ts, lo, "^-", color=LOWER, label="lower bound (grid)")
    if cert is not None:
        ax.plot(ts, cert, "s:", color=CERTIFIED, label="certified lower bound")
    for k, (t, e, r) in enumerate(zip(ts, est, (up - lo) / 2, strict=True)):
        if r > 0 or k == len(ts) - 1 or (k > 0 and (up - lo)[k - 1] > 0):  # not every converged level again
            ax.annotate(f"{e:.2f}±{r:.2f}", (t, e), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xticks(ts)
    ax.set_xlim(min(ts) - 0.4, max(ts) + 0.9)
    ax.set_ylim(bottom=min(0.0, float(lo.min())) - 0.2, top=float(up.max()) * 1.12 + 0.5)
    ax.set_xlabel("level t (subset size)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def _partial_point(ax: Any, t: int, lo: float, up: float) -> None:
    """The bounds when the run stopped part-way through level ``t`` (hollow markers)."""
    ax.plot([t, t], [lo, up], color="#999999", linewidth=1, linestyle=":")
    ax.plot(t, up, "v", markerfacecolor="none", color=UPPER)
    ax.plot(t, lo, "^", markerfacecolor="none", color=LOWER)
    ax.plot(t, (lo + up) / 2, "o", markerfacecolor="none", color=ESTIMATE, label=f"t = {t}: stopped part-way")
    ax.annotate(f"{(lo + up) / 2:.2f}±{(up - lo) / 2:.2f}", (t, (lo + up) / 2), textcoords="offset points",
                xytext=(6, 4), fontsize=8, color="#555555")
    ax.set_xlim(right=t + 0.9)
    ax.set_xticks(sorted({int(round(v)) for v in ax.get_xticks()} | {t}))
    ax.legend(fontsize=8, loc="lower right")


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _certified(study: StudyResult, pick: Callable[[torch.Tensor], float]) -> np.ndarray | None:
    """``pick`` of each level's certified lower bounds, or ``None`` without certification."""
    certs = [r.certified_lower for r in study.levels]
    if any(c is None for c in certs):
        return None
    return np.array([pick(c) for c in certs if c is not None], dtype=float)


def fig_input(study: StudyResult, path: Path, name: str) -> Path:
    """Fig. 1a: the bounds of one input after each level."""
    fig = new_figure(5.6, 4.0)
    ax = fig.subplots()
    i = study.focus
    if study.levels:
        ts = [r.t for r in study.levels]
        lo = np.array([int(r.lower[i]) for r in study.levels], dtype=float)
        up = np.array([int(r.upper[i]) for r in study.levels], dtype=float)
        cert = _certified(study, lambda c: float(c[i]))
        _bounds_panel(ax, ts, lo, up, cert)
    else:
        _empty(ax, "no level completed")
    part = study.partial_level()
    if part is not None and bool(part.active[i]):
        _partial_point(ax, part.t, float(part.lower[i]), float(part.upper[i]))
    ax.set_ylabel("L0 radius of this input")
    ax.set_title(f"(a) input {name}: bounds on d_m per level", fontsize=10)
    return save_png(fig, path)


def fig_global(study: StudyResult, path: Path) -> Path:
    """Fig. 1b: global lower / upper / estimate (and certified lower) per level."""
    fig = new_figure(5.6, 4.0)
    ax = fig.subplots()
    if study.levels:
        ts = [r.t for r in study.levels]
        lo = np.array([r.global_lower for r in study.levels])
        up = np.array([r.global_upper for r in study.levels])
        cert = _certified(study, lambda c: float(c.double().mean()))
        _bounds_panel(ax, ts, lo, up, cert)
    else:
        _empty(ax, "no level completed")
    part = study.partial_level()
    if part is not None and study.levels:
        _partial_point(ax, part.t, part.global_lower, part.global_upper)
    ax.set_ylabel("global L0 robustness (mean over inputs)")
    ax.set_title(f"(b) global robustness per level ({int(study.result.lower.numel())} inputs)", fontsize=10)
    return save_png(fig, path)


def fig_time(study: StudyResult, path: Path) -> Path:
    """Fig. 1c: box plot of the seconds per input at each level (attributed, see LevelRecord)."""
    done = [r for r in study.levels if bool(r.active.any())]
    fig = new_figure(max(5.6, 1.2 * len(done) + 1.5), 4.0)
    ax = fig.subplots()
    if done:
        data = [r.input_seconds[r.active].numpy() for r in done]
        ax.boxplot(data, showfliers=True, flierprops={"markersize": 3})
        ax.set_xticks(range(1, len(done) + 1))
        ax.set_xticklabels([f"t={r.t}\n{len(d)} inputs\nlevel {r.seconds:.3g} s"
                            for r, d in zip(done, data, strict=True)], fontsize=8)
        pos = np.concatenate(data)
        pos = pos[pos > 0]
        if pos.size and pos.max() / pos.min() > 30:
            ax.set_yscale("log")
    else:
        _empty(ax, "no level completed")
    ax.set_ylabel("seconds per input (level time shared by grid points)")
    ax.set_title("(c) time per input at each level", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return save_png(fig, path)


def converged_prefix(lo: np.ndarray, up: np.ndarray) -> int:
    """How many inputs, from the left, have all converged (the dashed line of Fig. 2)."""
    open_ = np.nonzero(lo != up)[0]
    return int(open_[0]) if open_.size else int(lo.size)


def fig_inputs(study: StudyResult, path: Path) -> Path:
    """Fig. 2: per-input bounds after each level (one panel per level, top to bottom), inputs
    ordered by their upper bound after level 1 (ties: by the last level's upper, then lower bound);
    the dashed line: every input left of it converged."""
    part = study.partial_level()
    levels = study.levels + ([part] if part is not None and study.levels else [])
    fig = new_figure(10.0, 2.3 * max(1, len(levels)) + 0.5)
    axes = fig.subplots(max(1, len(levels)), 1, squeeze=False, sharex=True)[:, 0]
    if not levels:
        _empty(axes[0], "no level completed")
        return save_png(fig, path)
    n_feat = study.result.n_features
    first, last = levels[0], levels[-1]
    order = np.lexsort((last.lower.numpy(), last.upper.numpy(), first.upper.numpy()))
    x = np.arange(order.size)
    size = 14 if order.size <= 200 else 3
    found = [r.upper[r.upper < n_feat] for r in levels]
    top = max([float(f.max()) for f in found if f.numel()] + [float(last.lower.max()), 1.0]) * 1.12 + 1.0
    for ax, r in zip(axes, levels, strict=True):
        lo, up = r.lower.numpy()[order].astype(float), r.upper.numpy()[order].astype(float)
        none = up >= n_feat  # no adversarial example known: upper = n, off the axis
        ax.vlines(x, lo, np.minimum(up, top), color="#cccccc", linewidth=1, zorder=1)
        ax.scatter(x[~none], up[~none], s=size, marker="v", color=UPPER, label="upper bound", zorder=3)
        if none.any():
            ax.scatter(x[none], np.full(int(none.sum()), top * 0.97), s=size, marker="v", facecolors="none",
                       edgecolors=UPPER, label=f"no example yet (upper = n = {n_feat}, off the axis)", zorder=3)
        open_ = (lo != up) & ~none
        ax.scatter(x[open_], ((lo + up) / 2)[open_], s=size * 0.5, marker="o", color=ESTIMATE,
                   label="estimate", zorder=2)
        ax.scatter(x, lo, s=size, marker="^", color=LOWER, label="lower bound (grid)", zorder=3)
        if r.certified_lower is not None:
            ax.scatter(x, r.certified_lower.numpy()[order], s=size * 1.6, marker="s", facecolors="none",
                       edgecolors=CERTIFIED, label="certified lower bound", zorder=4)
        k = converged_prefix(lo, up)
        ax.axvline(k - 0.5, color="#1f3fbf", linestyle="--", linewidth=1.2, label="all inputs left of it converged")
        ax.set_ylim(-0.3, top)
        ax.set_ylabel(f"t = {r.t}\nL0 radius")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.grid(axis="y", alpha=0.3)
        when = f"after level t = {r.t}" if r is not part else f"stopped part-way through level t = {r.t}"
        ax.set_title(f"{when}: {r.converged}/{order.size} converged ({k} left of the dashed line), "
                     f"estimate {r.estimate:.2f} ± {r.radius:.2f}", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    axes[0].legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    axes[-1].xaxis.get_major_locator().set_params(integer=True)
    axes[-1].set_xlabel("inputs ordered by their upper bound after t = 1")
    return save_png(fig, path)


def draw_study(study: StudyResult, directory: Path, names: list[str]) -> list[Path]:
    """Draw :data:`STUDY_FIGURES` into ``directory``; ``names`` label the inputs (Fig. 1a)."""
    return [fig_input(study, directory / STUDY_FIGURES[0], names[study.focus]),
            fig_global(study, directory / STUDY_FIGURES[1]), fig_time(study, directory / STUDY_FIGURES[2]),
            fig_inputs(study, directory / STUDY_FIGURES[3])]
