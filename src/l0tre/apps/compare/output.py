"""The output folder of a model comparison: ``results.json``, the figures and ``index.html``
(:func:`write_compare`)."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from ...atomic import make_folder
from ..study.page import INDEX_HTML, RESULTS_JSON, html_table, write_json, write_page
from .figures import draw_compare
from .result import CompareResult

__all__ = ["compare_dict", "write_compare"]


def compare_dict(comp: CompareResult, config: dict[str, Any],
                 test_accuracy: list[float | None] | None = None) -> dict[str, Any]:
    """``results.json`` of a comparison: :meth:`CompareResult.to_dict` with ``config`` and, when
    given, each model's ``test_accuracy`` (e.g. on the whole test set)."""
    d = comp.to_dict()
    if test_accuracy is not None:
        for row, acc in zip(d["models"], test_accuracy, strict=True):
            row["test_accuracy"] = acc
    d["statements"] = [s for t in comp.complete_levels() for s in comp.ranking(t).statements()]
    return {"config": config, **d}


def write_compare(out_dir: str | os.PathLike[str], comp: CompareResult, config: dict[str, Any], *,
                  test_accuracy: list[float | None] | None = None, figures: bool = True) -> list[Path]:
    """Write ``results.json`` and (with ``figures``) the PNG figures and ``index.html``.

    Returns:
        the files written.

    Raises:
        OutputError: the folder or a file cannot be written.
    """
    out = make_folder(out_dir)
    data = compare_dict(comp, config, test_accuracy)
    write_json(out / RESULTS_JSON, data)
    if not figures:
        return [out / RESULTS_JSON]
    pngs = draw_compare(comp, out, test_accuracy)
    page = write_page(out / INDEX_HTML, "Model comparison (L0-TRE case study 4)", _blocks(comp, data), pngs)
    return [out / RESULTS_JSON, *pngs, page]


def _blocks(comp: CompareResult, data: dict[str, Any]) -> list[tuple[str, str]]:
    """The page's tables: per level and model, the ranking with its pairwise tests."""
    cert = any("certified_lower" in r for r in data["table"])
    test = {m["name"]: m.get("test_accuracy") for m in data["models"]}
    show_test = any(a is not None for a in test.values())
    header = (["t", "model", "inputs", "accuracy"] + (["test accuracy"] if show_test else [])
              + ["lower", "upper", "estimate", "radius", "estimate mean ± std", "radius mean ± std", "converged",
                 "seconds"] + (["certified lower"] if cert else []))
    rows = [[r["t"], r["model"], r["inputs"], r["accuracy"]] + ([test[r["model"]]] if show_test else [])
            + [r["lower"], r["upper"], r["estimate"], r["radius"],
               f"{r['estimate_mean']:.3f} ± {r['estimate_std']:.3f}", f"{r['radius_mean']:.3f} ± {r['radius_std']:.3f}",
               r["converged"], r["seconds"]] + ([r.get("certified_lower")] if cert else []) for r in data["table"]]
    blocks = [("Summary", f"<p>{len(comp.names)} models, {comp.inputs} inputs at t = 1"
                          + (f", the first {comp.deep_inputs} at t ≥ 2" if comp.deep_inputs < comp.inputs else "")
                          + f"; stopped: {html.escape(comp.stopped)}.</p>"),
              ("Per level and model (Figs. 8–9)", html_table(header, rows))]
    for rank in data["rankings"]:
        prow = [[p["a"], p["b"], p["mean_difference"], f"[{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}]", p["p_holm"],
                 p["significant"], w["holds"], s]
                for p, w, s in zip(rank["pairs"], rank["worst_case"], rank["separated"], strict=True)]
        text = (f"<p>Most robust first: {html.escape(' > '.join(rank['order']))}. Paired t over the same "
                f"{rank['inputs']} inputs on the per-input estimates; p-values Holm-adjusted over the pairs. "
                "'worst case': lower(a) − upper(b) significantly above 0; 'separated': global lower(a) &gt; global "
                "upper(b).</p>")
        blocks.append((f"Ranking at t = {rank['t']}", text + html_table(
            ["a", "b", "mean a − b", f"{100 * comp.confidence:.0f}% CI", "p (Holm)", "significant",
             "worst case holds", "separated"], prow)))
    return blocks
