"""PNG figures of the output folders: those of a report (:mod:`l0tre.report`) and the examples
figure of ``l0tre attack`` (written by :mod:`l0tre.outdir`). Drawing only: nothing is read here.

The report's figures follow the L0-TRE paper: convergence of the global bounds per level and over
time (Fig. 1b), per-input bounds sorted by upper bound (Fig. 2), time per level (Fig. 1c) and
original | adversarial | difference images (Fig. 12). matplotlib is imported here only, lazily,
and drawn through the Agg canvas (no pyplot, no global backend switch); every PNG is written
atomically.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .atomic import atomic_write_bytes

if TYPE_CHECKING:  # the applications are a higher layer: only their type is named here
    import torch

    from .apps.attack.result import AttackResult

__all__ = ["ATTACK_EXAMPLES", "FIGURES", "MAX_EXAMPLES", "ReportData", "draw_figures", "new_figure", "save_png",
           "write_attack_examples"]

FIGURES = ("convergence.png", "per_input.png", "level_time.png", "adversarial.png")
MAX_EXAMPLES = 16
ATTACK_EXAMPLES = 8
_LOWER, _UPPER, _EST, _CONV = "#1f6fb4", "#c8312b", "#2e9a3a", "#222222"


@dataclass
class ReportData:
    """What the figures and the page are drawn from."""

    directory: Path
    results: dict[str, Any]
    adversarial: dict[str, np.ndarray] | None
    notes: list[str] = field(default_factory=list)

    @property
    def glob(self) -> dict[str, Any]:
        """The ``global`` block of results.json."""
        return dict(self.results.get("global", {}))

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """The per-input rows of results.json."""
        return list(self.results.get("inputs", []))

    @property
    def history(self) -> list[dict[str, Any]]:
        """The snapshot history of results.json."""
        return list(self.results.get("history", []))


# -- report figures -------------------------------------------------------------------------------
def new_figure(width: float, height: float) -> Any:
    """A matplotlib figure on an Agg canvas (no pyplot, no global state); every figure of the
    package (reports and applications) starts here."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: Path, *, tight: bool = False) -> Path:
    """Save ``fig`` as PNG, atomically (``tight``: crop to the drawn area)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight" if tight else None, facecolor="white")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _level_points(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last snapshot of each completed level ``t >= 1``, by ``t``."""
    by_t: dict[int, dict[str, Any]] = {}
    for h in history:
        if h.get("level_complete") and int(h.get("t", 0)) >= 1:
            by_t[int(h["t"])] = h
    return [by_t[t] for t in sorted(by_t)]


def _convergence_levels(ax: Any, levels: list[dict[str, Any]]) -> None:
    """Panel (a): the global bounds after each completed level."""
    if levels:
        ts = [int(h["t"]) for h in levels]
        lo = np.array([h["lower"] for h in levels], dtype=float)
        up = np.array([h["upper"] for h in levels], dtype=float)
        est = (lo + up) / 2
        ax.fill_between(ts, lo, up, color=_EST, alpha=0.12, linewidth=0)
        ax.plot(ts, up, "v-", color=_UPPER, label="upper bound")
        ax.plot(ts, est, "o--", color=_EST, label="estimate")
        ax.plot(ts, lo, "^-", color=_LOWER, label="lower bound")
        for t, e, r in zip(ts, est, (up - lo) / 2, strict=True):
            ax.annotate(f"{e:.2f}±{r:.2f}", (t, e), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.set_xticks(ts)
        ax.set_xlim(min(ts) - 0.4, max(ts) + 0.8)
        ax.set_ylim(bottom=min(0.0, float(lo.min())), top=float(up.max()) * 1.15 + 0.5)
        ax.legend(fontsize=8, loc="upper right")
    else:
        ax.text(0.5, 0.5, "no level completed yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
    ax.set_xlabel("level t (subset size)")
    ax.set_ylabel("global L0 radius (mean over inputs)")
    ax.set_title("(a) global bounds after each level", fontsize=10)
    ax.grid(alpha=0.3)


def _convergence_time(ax: Any, hist: list[dict[str, Any]], levels: list[dict[str, Any]]) -> None:
    """Panel (b): the global bounds of every snapshot over wall time, levels marked."""
    xlabel = "wall time (s)"
    if hist:
        sec = np.array([h["seconds"] for h in hist], dtype=float)
        lo = np.array([h["lower"] for h in hist], dtype=float)
        up = np.array([h["upper"] for h in hist], dtype=float)
        ax.step(sec, up, where="post", color=_UPPER, label="upper bound")
        ax.step(sec, (lo + up) / 2, where="post", color=_EST, linestyle="--", label="estimate")
        ax.step(sec, lo, where="post", color=_LOWER, label="lower bound")
        ax.plot(sec, up, "v", color=_UPPER, markersize=3)
        ax.plot(sec, lo, "^", color=_LOWER, markersize=3)
        later = [h["upper"] for h in hist if int(h.get("t", 0)) >= 1]
        if later:
            top = max(later) * 1.15 + 0.5
            ax.set_ylim(bottom=min(0.0, float(lo.min())), top=top)
            if float(up.max()) > top:
                xlabel += f"\n(before level 1 completed the upper bound was up to {up.max():.0f}: off scale)"
        for h in levels:
            ax.axvline(h["seconds"], color="#999999", linestyle=":", linewidth=1)
            ax.annotate(f"t={int(h['t'])} done", (h["seconds"], 0.5), xycoords=("data", "axes fraction"),
                        xytext=(-3, 0), textcoords="offset points", fontsize=7, color="#555555",
                        rotation=90, ha="right", va="center")
        ax.legend(fontsize=8, loc="best")
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_title("(b) global bounds over time (anytime snapshots)", fontsize=10)
    ax.grid(alpha=0.3)


def _fig_convergence(rep: ReportData, path: Path) -> Path:
    """Global bounds per level and over time (paper Fig. 1b)."""
    hist = [h for h in rep.history if h.get("lower") is not None and h.get("upper") is not None]
    fig = new_figure(11.0, 4.0)
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.5]})
    levels = _level_points(hist)
    _convergence_levels(ax1, levels)
    _convergence_time(ax2, hist, levels)
    fig.suptitle("Convergence of the global robustness bounds", fontsize=11)
    return save_png(fig, path, tight=True)


def _fig_per_input(rep: ReportData, path: Path) -> Path:
    """Per-input bounds sorted by upper bound (paper Fig. 2)."""
    rows = sorted(rep.inputs, key=lambda r: (int(r["upper"]), int(r["lower"])))
    n = len(rows)
    lo = np.array([r["lower"] for r in rows], dtype=float)
    up = np.array([r["upper"] for r in rows], dtype=float)
    found = np.array([bool(r.get("found", r.get("adversarial_label") is not None)) for r in rows])
    conv = np.array([bool(r.get("converged")) for r in rows])
    x = np.arange(n)
    shown_up = up[found] if found.any() else np.array([0.0])
    top = max(float(shown_up.max()), float(lo.max()) if n else 0.0) * 1.15 + 1.0
    up_plot = np.where(found, up, top * 0.97)
    fig = new_figure(min(14.0, max(7.0, 0.12 * n + 4.0)), 4.4)
    ax = fig.subplots()
    ax.vlines(x, lo, up_plot, color="#bbbbbb", linewidth=2 if n <= 100 else 1, zorder=1)
    size = 30 if n <= 100 else 10
    if (found & ~conv).any():
        ax.scatter(x[found & ~conv], up[found & ~conv], marker="v", color=_UPPER, s=size, label="upper bound",
                   zorder=3)
    if (~found).any():
        ax.scatter(x[~found], up_plot[~found], marker="^", facecolors="none", edgecolors=_UPPER, s=size,
                   label=f"no example found\n(upper = n = {int(up[~found].max())}, off scale)", zorder=3)
    if (~conv).any():
        ax.scatter(x[~conv], lo[~conv], marker="^", color=_LOWER, s=size, label="lower bound", zorder=3)
    est = ~conv & found  # the estimate of an input without an example is off scale too
    if est.any():
        ax.scatter(x[est], ((lo + up) / 2)[est], marker="o", color=_EST, s=size * 0.4, label="estimate", zorder=2)
    if conv.any():
        ax.scatter(x[conv], lo[conv], marker="D", color=_CONV, s=size * 0.8, label="converged (lower = upper)",
                   zorder=4)
    ax.set_ylim(bottom=-0.3, top=top)
    ax.set_xlim(-0.8, n - 0.2)
    if n <= 40:
        ax.set_xticks(x)
        ax.set_xticklabels([str(r["index"]) for r in rows], rotation=90, fontsize=7)
        ax.set_xlabel("input (dataset index), sorted by upper bound")
    else:
        ax.set_xlabel("inputs, sorted by upper bound")
    ax.set_ylabel("L0 radius (pixels)" if rep.results.get("features", "pixel") == "pixel" else "L0 radius (elements)")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.set_title(f"Per-input bounds on the maximum safe L0 radius ({int(conv.sum())}/{n} converged)", fontsize=11)
    return save_png(fig, path, tight=True)


def _level_costs(rep: ReportData) -> tuple[list[str], list[float], list[float], list[bool]]:
    """Labels, seconds, evaluations and "incomplete" flags, one per level."""
    secs = [float(s) for s in rep.results.get("level_seconds", [])]
    levels = _level_points(rep.history)
    evals: list[float] = []
    prev = 0.0
    for h in levels[: len(secs)]:
        evals.append(float(h["evaluations"]) - prev)
        prev = float(h["evaluations"])
    evals += [float("nan")] * (len(secs) - len(evals))
    labels = [f"t={i + 1}" for i in range(len(secs))]
    incomplete = [False] * len(secs)
    g = rep.glob
    if rep.results.get("stopped") in ("time_budget", "interrupted") and not rep.results.get("level_complete"):
        extra_s = float(g.get("seconds") or 0.0) - (levels[-1]["seconds"] if levels else 0.0)
        extra_e = float(g.get("evaluations") or 0.0) - prev
        if extra_s > 0:
            if extra_e <= 0:  # the engine counts a level's evaluations when a shard completes
                extra_e = float("nan")
            labels.append(f"t={len(secs) + 1}\n(incomplete)")
            secs.append(extra_s)
            evals.append(extra_e)
            incomplete.append(True)
    return labels, secs, evals, incomplete


def _fig_level_time(rep: ReportData, path: Path) -> Path:
    """Seconds and model evaluations per level (paper Fig. 1c)."""
    labels, secs, evals, incomplete = _level_costs(rep)
    fig = new_figure(10.0, 3.8)
    axes = fig.subplots(1, 2)
    for ax, values, title, unit in ((axes[0], secs, "time per level", "seconds"),
                                    (axes[1], evals, "model evaluations per level", "evaluations")):
        if not values:
            ax.text(0.5, 0.5, "no level completed yet", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
        else:
            vals = np.nan_to_num(np.array(values, dtype=float))
            colors = ["#9ecae1" if inc else "#3182bd" for inc in incomplete]
            bars = ax.bar(range(len(vals)), vals, color=colors, hatch=None, edgecolor="#1c4f7a")
            for bar, inc in zip(bars, incomplete, strict=True):
                if inc:
                    bar.set_hatch("//")
            pos = vals[vals > 0]
            if pos.size and pos.max() / pos.min() > 30:
                ax.set_yscale("log")
            for i, (v, raw) in enumerate(zip(vals, values, strict=True)):
                text = f"{v:.3g} s" if unit == "seconds" else f"{v:,.0f}"
                if not math.isfinite(raw):
                    text = "not counted yet"
                ax.annotate(text, (i, v), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                            textcoords="offset points")
            ax.set_xticks(range(len(vals)))
            ax.set_xticklabels(labels, fontsize=8)
            ax.margins(y=0.15)
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Cost of each level t", fontsize=11)
    return save_png(fig, path, tight=True)


def _to_image(x: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, str | None]:
    """``(C, H, W)`` → something ``imshow`` draws, and its colour map."""
    scaled = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    if scaled.shape[0] == 3:
        return scaled.transpose(1, 2, 0), None
    return scaled.mean(0), "gray"


def _changes(img: np.ndarray, diff: np.ndarray) -> np.ndarray:
    """RGB ``(H, W, 3)``: the original faded to light grey, changed pixels in saturated red
    (brighter) or blue (darker), so that single changed pixels stand out."""
    grey = img.mean(2) if img.ndim == 3 else img
    base = 0.93 - 0.25 * grey
    out = np.repeat(base[:, :, None], 3, axis=2)
    out[diff > 0] = (0.84, 0.10, 0.11)
    out[diff < 0] = (0.13, 0.35, 0.80)
    return out


def _fig_adversarial(rep: ReportData, path: Path) -> Path | None:
    """Original | adversarial | changed pixels (paper Fig. 12); ``None`` without examples."""
    adv = rep.adversarial
    if adv is None or len(adv["index"]) == 0 or "x" not in adv:
        return None
    k = min(MAX_EXAMPLES, len(adv["index"]))
    groups = 1 if k == 1 else 2
    nrows = math.ceil(k / groups)
    lo, hi = (rep.results.get("config", {}).get("bounds") or [0.0, 1.0])[:2]
    fig = new_figure(3 * groups * 1.75, nrows * 1.95 + 0.5)
    axes = np.atleast_2d(fig.subplots(nrows, 3 * groups, squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    labels = adv.get("label", np.full(k, -1))
    for j in range(k):
        r, c0 = divmod(j, groups)
        c0 *= 3
        x, xa = adv["x"][j].astype(float), adv["x_adv"][j].astype(float)
        img, cmap = _to_image(x, lo, hi)
        img_a, _ = _to_image(xa, lo, hi)
        changed = (xa != x).any(0)
        diff = np.where(changed, np.where((xa - x).mean(0) >= 0, 1.0, -1.0), 0.0)
        lab = int(labels[j])
        pred = int(adv["predicted"][j]) if "predicted" in adv else -1
        l0 = int(adv["l0"][j]) if "l0" in adv else int(changed.sum())
        ax_o, ax_a, ax_d = axes[r, c0], axes[r, c0 + 1], axes[r, c0 + 2]
        ax_o.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        head = f"#{int(adv['index'][j])}: " + (f"label {lab}" if lab >= 0 else f"pred {pred}")
        if lab >= 0 and pred >= 0 and pred != lab:
            head += f" (pred {pred})"
        ax_o.set_title(head, fontsize=8)
        ax_a.imshow(img_a, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        adv_label = int(adv["adversarial_label"][j]) if "adversarial_label" in adv else -1
        ax_a.set_title(f"adversarial → {adv_label}", fontsize=8, color=_UPPER)
        ax_d.imshow(_changes(img, diff), interpolation="nearest")
        ax_d.set_title(f"L0 = {l0} changed", fontsize=8)
        for ax in (ax_o, ax_a, ax_d):
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
    shown = f" (first {k} of {len(adv['index'])})" if k < len(adv["index"]) else ""
    fig.suptitle(f"Adversarial examples: original | adversarial | changed pixels (red: brighter, blue: darker)"
                 f"{shown}", fontsize=10)
    return save_png(fig, path, tight=True)


def draw_figures(rep: ReportData, directory: Path) -> list[Path]:
    """Draw the report's figures into ``directory``; returns the files written (in
    :data:`FIGURES` order; no ``adversarial.png`` without examples). Needs matplotlib.

    Raises:
        OutputError: a PNG cannot be written.
    """
    written = [_fig_convergence(rep, directory / FIGURES[0]), _fig_per_input(rep, directory / FIGURES[1]),
               _fig_level_time(rep, directory / FIGURES[2])]
    adv = _fig_adversarial(rep, directory / FIGURES[3])
    return written if adv is None else [*written, adv]


# -- l0tre attack ----------------------------------------------------------------------------------
def write_attack_examples(path: str | os.PathLike[str], x: torch.Tensor, res: AttackResult,
                          limit: int = ATTACK_EXAMPLES) -> bool:
    """PNG of up to ``limit`` successful inputs: original | adversarial | difference.

    matplotlib is imported here only, and drawn through the Agg canvas (no pyplot, no global
    backend switch).

    Returns:
        whether a figure was written (``False`` without successes).

    Raises:
        OutputError: the PNG cannot be written.
    """
    ok = res.success.nonzero().squeeze(1)[:limit].tolist()
    if not ok:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 2 * len(ok)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(ok), 3, squeeze=False)
    for r, i in enumerate(ok):
        orig, adv = x[i].detach().float().cpu(), res.x_adv[i].detach().float().cpu()
        diff = (adv - orig).abs().amax(0)
        for c, (img, title) in enumerate([(orig, f"#{i} label {int(res.predicted[i])}"),
                                          (adv, f"→ {int(res.adversarial_label[i])}, L0={int(res.l0[i])}"),
                                          (diff, "difference")]):
            ax = axes[r][c]
            if c == 2:
                ax.imshow(img.numpy(), cmap="hot", interpolation="nearest", vmin=0.0, vmax=float(img.max()) or 1.0)
            elif img.shape[0] == 3:
                ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            else:
                ax.imshow(img[0].numpy(), cmap="gray", interpolation="nearest", vmin=0.0, vmax=1.0)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    atomic_write_bytes(path, png.getvalue())
    return True
