"""Reports of an ``l0tre evaluate`` output folder: PNG figures and a self-contained ``index.html``.

Everything is read back from the folder (``results.json`` and ``adversarial.npz``, through
:func:`l0tre.outdir.read_results` and :func:`l0tre.outdir.read_adversarial`), so
``l0tre report DIR`` rebuilds the report at any time without recomputation. The figures follow
the L0-TRE paper: convergence of the global bounds per level and over time (Fig. 1b), per-input
bounds sorted by upper bound (Fig. 2), time per level (Fig. 1c) and original | adversarial |
difference images (Fig. 12). matplotlib is imported here only, lazily, and drawn through the
Agg canvas (no pyplot, no global backend switch).
"""

from __future__ import annotations

import html
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_bytes, atomic_write_text
from .outdir import ADVERSARIAL_NPZ, OUTPUT_FILES, read_adversarial, read_results

__all__ = ["FIGURES", "INDEX_HTML", "build_report", "load_results"]

FIGURES = ("convergence.png", "per_input.png", "level_time.png", "adversarial.png")
INDEX_HTML = "index.html"
MAX_EXAMPLES = 16
MAX_TABLE_ROWS = 1000
_LOWER, _UPPER, _EST, _CONV = "#1f6fb4", "#c8312b", "#2e9a3a", "#222222"


@dataclass
class _Report:
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


# -- loading ----------------------------------------------------------------------------------------
#: ``read_results`` under its earlier name
load_results = read_results


def _load_adversarial(directory: Path, notes: list[str]) -> dict[str, np.ndarray] | None:
    """adversarial.npz as a dict of arrays, or ``None`` (with a note) when absent or unreadable."""
    try:
        return read_adversarial(directory)
    except ValueError as exc:
        notes.append(f"{exc}; adversarial images are not shown")
        return None


# -- figures ----------------------------------------------------------------------------------------
def _new_figure(width: float, height: float) -> Any:
    """A matplotlib figure on an Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    """Save ``fig`` as PNG, atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", facecolor="white")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _level_points(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last snapshot of each completed level ``t >= 1``, by ``t``."""
    by_t: dict[int, dict[str, Any]] = {}
    for h in history:
        if h.get("level_complete") and int(h.get("t", 0)) >= 1:
            by_t[int(h["t"])] = h
    return [by_t[t] for t in sorted(by_t)]


def _fig_convergence(rep: _Report, path: Path) -> Path:
    """Global bounds per level and over time (paper Fig. 1b)."""
    hist = [h for h in rep.history if h.get("lower") is not None and h.get("upper") is not None]
    levels = _level_points(hist)
    fig = _new_figure(11.0, 4.0)
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.5]})
    # (a) per level
    if levels:
        ts = [int(h["t"]) for h in levels]
        lo = np.array([h["lower"] for h in levels], dtype=float)
        up = np.array([h["upper"] for h in levels], dtype=float)
        est = (lo + up) / 2
        ax1.fill_between(ts, lo, up, color=_EST, alpha=0.12, linewidth=0)
        ax1.plot(ts, up, "v-", color=_UPPER, label="upper bound")
        ax1.plot(ts, est, "o--", color=_EST, label="estimate")
        ax1.plot(ts, lo, "^-", color=_LOWER, label="lower bound")
        for t, e, r in zip(ts, est, (up - lo) / 2, strict=True):
            ax1.annotate(f"{e:.2f}±{r:.2f}", (t, e), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax1.set_xticks(ts)
        ax1.set_xlim(min(ts) - 0.4, max(ts) + 0.8)
        ax1.set_ylim(bottom=min(0.0, float(lo.min())), top=float(up.max()) * 1.15 + 0.5)
        ax1.legend(fontsize=8, loc="upper right")
    else:
        ax1.text(0.5, 0.5, "no level completed yet", ha="center", va="center", transform=ax1.transAxes)
        ax1.set_xticks([])
    ax1.set_xlabel("level t (subset size)")
    ax1.set_ylabel("global L0 radius (mean over inputs)")
    ax1.set_title("(a) global bounds after each level", fontsize=10)
    ax1.grid(alpha=0.3)
    # (b) over time
    xlabel = "wall time (s)"
    if hist:
        sec = np.array([h["seconds"] for h in hist], dtype=float)
        lo = np.array([h["lower"] for h in hist], dtype=float)
        up = np.array([h["upper"] for h in hist], dtype=float)
        ax2.step(sec, up, where="post", color=_UPPER, label="upper bound")
        ax2.step(sec, (lo + up) / 2, where="post", color=_EST, linestyle="--", label="estimate")
        ax2.step(sec, lo, where="post", color=_LOWER, label="lower bound")
        ax2.plot(sec, up, "v", color=_UPPER, markersize=3)
        ax2.plot(sec, lo, "^", color=_LOWER, markersize=3)
        later = [h["upper"] for h in hist if int(h.get("t", 0)) >= 1]
        if later:
            top = max(later) * 1.15 + 0.5
            ax2.set_ylim(bottom=min(0.0, float(lo.min())), top=top)
            if float(up.max()) > top:
                xlabel += f"\n(before level 1 completed the upper bound was up to {up.max():.0f}: off scale)"
        for h in levels:
            ax2.axvline(h["seconds"], color="#999999", linestyle=":", linewidth=1)
            ax2.annotate(f"t={int(h['t'])} done", (h["seconds"], 0.5), xycoords=("data", "axes fraction"),
                         xytext=(-3, 0), textcoords="offset points", fontsize=7, color="#555555",
                         rotation=90, ha="right", va="center")
        ax2.legend(fontsize=8, loc="best")
    ax2.set_xlabel(xlabel, fontsize=9)
    ax2.set_title("(b) global bounds over time (anytime snapshots)", fontsize=10)
    ax2.grid(alpha=0.3)
    fig.suptitle("Convergence of the global robustness bounds", fontsize=11)
    return _save(fig, path)


def _fig_per_input(rep: _Report, path: Path) -> Path:
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
    fig = _new_figure(min(14.0, max(7.0, 0.12 * n + 4.0)), 4.4)
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
    return _save(fig, path)


def _level_costs(rep: _Report) -> tuple[list[str], list[float], list[float], list[bool]]:
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


def _fig_level_time(rep: _Report, path: Path) -> Path:
    """Seconds and model evaluations per level (paper Fig. 1c)."""
    labels, secs, evals, incomplete = _level_costs(rep)
    fig = _new_figure(10.0, 3.8)
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
    return _save(fig, path)


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


def _fig_adversarial(rep: _Report, path: Path) -> Path | None:
    """Original | adversarial | changed pixels (paper Fig. 12); ``None`` without examples."""
    adv = rep.adversarial
    if adv is None or len(adv["index"]) == 0 or "x" not in adv:
        return None
    k = min(MAX_EXAMPLES, len(adv["index"]))
    groups = 1 if k == 1 else 2
    nrows = math.ceil(k / groups)
    lo, hi = (rep.results.get("config", {}).get("bounds") or [0.0, 1.0])[:2]
    fig = _new_figure(3 * groups * 1.75, nrows * 1.95 + 0.5)
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
    return _save(fig, path)


# -- html -------------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 3) -> str:
    """A value for the HTML tables."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.{digits}f}" if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (list, tuple)):
        text = ", ".join(str(i) for i in v[:20]) + (f", … ({len(v)} in all)" if len(v) > 20 else "")
        return f"[{text}]"
    return str(v)


def _table(rows: list[tuple[str, Any]]) -> str:
    """A two-column key/value HTML table."""
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table class='kv'>{body}</table>"


def _summary_rows(rep: _Report) -> list[tuple[str, Any]]:
    """Rows of the summary table."""
    g = rep.glob
    acc = g.get("accuracy")
    rows: list[tuple[str, Any]] = [
        ("global lower bound", g.get("lower")),
        ("global upper bound", g.get("upper")),
        ("estimate ± radius", f"{_fmt(g.get('estimate'))} ± {_fmt(g.get('radius'))}"),
    ]
    if g.get("certified_lower") is not None:
        rows.append(("certified lower bound", g.get("certified_lower")))
    rows += [
        ("last complete level t", g.get("t")),
        ("stopped", rep.results.get("stopped")),
        ("inputs (converged)", f"{_fmt(g.get('inputs', len(rep.inputs)))} ({_fmt(g.get('converged'))})"),
        ("accuracy", None if acc is None else f"{100 * acc:.1f}%"),
        ("model evaluations", g.get("evaluations")),
        ("wall time (s)", g.get("seconds")),
    ]
    return rows


def _inputs_table(rep: _Report) -> str:
    """The per-input HTML table (the first MAX_TABLE_ROWS rows)."""
    rows = rep.inputs
    cert = any("certified_lower" in r for r in rows)
    heads = ["index", "label", "predicted", "lower", "upper", "estimate", "converged", "lower kind",
             "adversarial label"] + (["certified lower"] if cert else [])
    out = ["<table class='grid'><tr>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr>"]
    for r in rows[:MAX_TABLE_ROWS]:
        cells = [r.get("index"), r.get("label"), r.get("predicted"), r.get("lower"), r.get("upper"),
                 (r["lower"] + r["upper"]) / 2, r.get("converged"), r.get("lower_kind"), r.get("adversarial_label")]
        if cert:
            cells.append(r.get("certified_lower"))
        cls = " class='conv'" if r.get("converged") else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(_fmt(c, 1))}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    if len(rows) > MAX_TABLE_ROWS:
        out.append(f"<p>First {MAX_TABLE_ROWS} of {len(rows)} inputs; all are in per_input.csv.</p>")
    return "".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{padding:3px 10px;border:1px solid #ddd;text-align:right}
table.kv th{text-align:left;background:#f6f6f6}table.grid th{background:#f0f0f0}tr.conv td{color:#555}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555}
.note{color:#8a5a00}details{margin:1em 0}code{background:#f4f4f4;padding:0 3px}
"""

_CAPTIONS = {
    "convergence.png": "Global lower bound, upper bound and estimate (mean over inputs) after each level t, "
                       "and over time from the anytime snapshots (cf. L0-TRE paper, Fig. 1b).",
    "per_input.png": "Per-input lower and upper bounds on the maximum safe L0 radius, sorted by upper bound "
                     "(cf. Fig. 2). Diamonds: converged inputs.",
    "level_time.png": "Wall time and model evaluations per level t (cf. Fig. 1c); hatched: the level running "
                      "when the run stopped.",
    "adversarial.png": "Original | adversarial example found (re-checked on the model) | the changed pixels "
                       "(red: brighter, blue: darker) (cf. Fig. 12).",
}


def _html(rep: _Report, figures: list[str]) -> str:
    """The whole index.html page."""
    cfg = rep.results.get("config", {})
    model = cfg.get("model_name") or cfg.get("model", "model")
    title = f"l0tre report: {model} on {cfg.get('data_name') or cfg.get('data', 'data')}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    g = rep.glob
    parts.append(
        f"<p>Maximum safe L0 radius: <b>{_fmt(g.get('lower'))} ≤ d ≤ {_fmt(g.get('upper'))}</b> "
        f"(estimate {_fmt(g.get('estimate'))} ± {_fmt(g.get('radius'))}), epsilon {_fmt(rep.results.get('epsilon'))}, "
        f"features {html.escape(str(rep.results.get('features', '')))}, n = {_fmt(rep.results.get('n_features'))}.</p>"
    )
    parts.append("<h2>Summary</h2>" + _table(_summary_rows(rep)))
    for note in [*cfg.get("data_notes", []), *rep.notes]:
        parts.append(f"<p class='note'>Note: {html.escape(str(note))}</p>")
    parts.append("<h2>Figures</h2>")
    for name in figures:
        parts.append(f"<figure><img src='{name}' alt='{name}'><figcaption>{html.escape(_CAPTIONS[name])}"
                     "</figcaption></figure>")
    parts.append("<h2>Inputs</h2>" + _inputs_table(rep))
    files = [f for f in OUTPUT_FILES if (rep.directory / f).exists()]
    parts.append("<h2>Files</h2><p>" + " · ".join(f"<a href='{f}'>{f}</a>" for f in files) + "</p>")
    cfg_rows = [(k, v) for k, v in cfg.items() if k != "data_notes"]
    parts.append("<details><summary>Configuration</summary>" + _table(cfg_rows) + "</details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# -- entry point ------------------------------------------------------------------------------------
def build_report(directory: str | os.PathLike[str]) -> list[Path]:
    """(Re)build the PNG figures and ``index.html`` of an output folder.

    Returns:
        the files written (figures, then ``index.html``). Without matplotlib only the page is
        written, with a note.

    Raises:
        FileNotFoundError: no folder or no ``results.json`` in it.
        ValueError: ``results.json`` is not readable.
    """
    d = Path(directory)
    notes: list[str] = []
    rep = _Report(d, read_results(d), None, notes)
    rep.adversarial = _load_adversarial(d, notes)
    written: list[Path] = []
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        notes.append("matplotlib is not installed (pip install 'l0tre[plots]'): figures are not drawn")
    else:
        written.append(_fig_convergence(rep, d / "convergence.png"))
        written.append(_fig_per_input(rep, d / "per_input.png"))
        written.append(_fig_level_time(rep, d / "level_time.png"))
        adv = _fig_adversarial(rep, d / "adversarial.png")
        if adv is not None:
            written.append(adv)
        elif rep.adversarial is not None or not (d / ADVERSARIAL_NPZ).exists():
            notes.append("no adversarial example found yet: no adversarial image figure")
    names = [p.name for p in written]
    for stale in FIGURES:  # figures of an earlier run that this one does not have
        if stale not in names and (d / stale).exists():
            (d / stale).unlink()
    index = d / INDEX_HTML
    atomic_write_text(index, _html(rep, names))
    written.append(index)
    return written
