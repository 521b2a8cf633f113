"""Reports of an ``l0tre evaluate`` output folder: PNG figures and a self-contained ``index.html``.

Everything is read back from the folder (``results.json`` and ``adversarial.npz``, through
:func:`l0tre.outdir.read_results` and :func:`l0tre.outdir.read_adversarial`), so
``l0tre report DIR`` rebuilds the report at any time without recomputation. The figures follow
the L0-TRE paper: convergence of the global bounds per level and over time (Fig. 1b), per-input
bounds sorted by upper bound (Fig. 2), time per level (Fig. 1c) and original | adversarial |
difference images (Fig. 12); they are drawn by :mod:`l0tre.figures`. A folder that
cannot be written raises :class:`l0tre.atomic.OutputError` (an ``OSError``).
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import OutputError, atomic_write_text
from .figures import FIGURES, ReportData, draw_figures
from .outdir import ADVERSARIAL_NPZ, OUTPUT_FILES, read_adversarial, read_results

__all__ = ["FIGURES", "INDEX_HTML", "build_report", "load_results"]

INDEX_HTML = "index.html"
MAX_TABLE_ROWS = 1000

#: ``read_results`` under its earlier name
load_results = read_results


def _load_adversarial(directory: Path, notes: list[str]) -> dict[str, np.ndarray] | None:
    """adversarial.npz as a dict of arrays, or ``None`` (with a note) when absent or unreadable."""
    try:
        return read_adversarial(directory)
    except ValueError as exc:
        notes.append(f"{exc}; adversarial images are not shown")
        return None


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


def _summary_rows(rep: ReportData) -> list[tuple[str, Any]]:
    """Rows of the summary table."""
    g = rep.glob
    acc = g.get("accuracy")
    claimed = g.get("lower_bound_claimed", True) is not False
    rows: list[tuple[str, Any]] = [
        ("global lower bound", g.get("lower") if claimed
         else f"not claimed (pixels {rep.results.get('pixels')}: {_fmt(g.get('lower'))} within the selection)"),
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


def _inputs_table(rep: ReportData) -> str:
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


def _html(rep: ReportData, figures: list[str]) -> str:
    """The whole index.html page."""
    cfg = rep.results.get("config", {})
    model = cfg.get("model_name") or cfg.get("model", "model")
    title = f"l0tre report: {model} on {cfg.get('data_name') or cfg.get('data', 'data')}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    g = rep.glob
    span = (f"{_fmt(g.get('lower'))} ≤ d ≤ {_fmt(g.get('upper'))}" if g.get("lower_bound_claimed") is not False
            else f"d ≤ {_fmt(g.get('upper'))} (lower bound not claimed)")
    parts.append(
        f"<p>Maximum safe L0 radius: <b>{span}</b> "
        f"(estimate {_fmt(g.get('estimate'))} ± {_fmt(g.get('radius'))}), epsilon {_fmt(rep.results.get('epsilon'))}, "
        f"features {html.escape(str(rep.results.get('features', '')))}, n = {_fmt(rep.results.get('n_features'))}.</p>"
    )
    if g.get("lower_bound_claimed") is False:
        parts.append(f"<p class='note'>Pixel selection {html.escape(str(rep.results.get('pixels')))}: only the "
                     "selected features were searched. The upper bound (an adversarial example) holds for each "
                     "image; the lower bound is not claimed (it only says that no grid change of the selected "
                     "features flips the label).</p>")
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
        OutputError: a file cannot be written (an ``OSError``; the message names it).
    """
    d = Path(directory)
    notes: list[str] = []
    rep = ReportData(d, read_results(d), None, notes)
    rep.adversarial = _load_adversarial(d, notes)
    written: list[Path] = []
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        notes.append("matplotlib is not installed (pip install 'l0tre[plots]'): figures are not drawn")
    else:
        written = draw_figures(rep, d)
        if d / "adversarial.png" not in written and (rep.adversarial is not None or not (d / ADVERSARIAL_NPZ).exists()):
            notes.append("no adversarial example found yet: no adversarial image figure")
    names = [p.name for p in written]
    for stale in FIGURES:  # figures of an earlier run that this one does not have
        if stale not in names and (d / stale).exists():
            try:
                (d / stale).unlink()
            except OSError as exc:
                raise OutputError.from_os_error(exc, d / stale, action="remove") from exc
    index = d / INDEX_HTML
    atomic_write_text(index, _html(rep, names))
    written.append(index)
    return written
