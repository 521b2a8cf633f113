"""The output folder of a global robustness study: ``results.json``, the figures of the paper's
Figs. 1–2 and ``index.html`` (:func:`write_study`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...atomic import make_folder
from .core import StudyResult
from .figures import draw_study
from .page import INDEX_HTML, RESULTS_JSON, fmt, html_table, write_json, write_page

__all__ = ["study_dict", "write_study"]


def study_dict(study: StudyResult, indices: Sequence[int], config: dict[str, Any]) -> dict[str, Any]:
    """``results.json`` of a study: :meth:`StudyResult.to_dict` with ``config`` and each input's
    ``index`` in the source data set.

    Raises:
        ValueError: ``indices`` does not have one entry per input.
    """
    d = study.to_dict()
    if len(indices) != len(d["inputs"]):
        raise ValueError(f"indices: expected {len(d['inputs'])} source positions, got {len(indices)}")
    for row, idx in zip(d["inputs"], indices, strict=True):
        row["index"] = int(idx)
    d["focus_index"] = int(indices[study.focus]) if len(indices) else None
    return {"config": config, **d}


def write_study(out_dir: str | os.PathLike[str], study: StudyResult, indices: Sequence[int],
                config: dict[str, Any], *, figures: bool = True) -> list[Path]:
    """Write ``results.json`` and (with ``figures``) the PNG figures and ``index.html``.

    Returns:
        the files written.

    Raises:
        OutputError: the folder or a file cannot be written.
    """
    out = make_folder(out_dir)
    data = study_dict(study, indices, config)
    write_json(out / RESULTS_JSON, data)
    written = [out / RESULTS_JSON]
    if not figures:
        return written
    pngs = draw_study(study, out, [f"#{int(i)}" for i in indices])
    written += pngs
    written.append(write_page(out / INDEX_HTML, "Global robustness study (L0-TRE case study 1)",
                              _blocks(study, data), pngs))
    return written


def _blocks(study: StudyResult, data: dict[str, Any]) -> list[tuple[str, str]]:
    """The page's tables."""
    g = data["global"]
    cert = any(r.certified_lower is not None for r in study.levels)
    header = ["t", "inputs worked on", "lower", "upper", "estimate", "radius", "converged", "seconds",
              "evaluations"] + (["certified lower"] if cert else [])
    rows = [[r["t"], r["active"], r["lower"], r["upper"], r["estimate"], r["radius"], r["converged"],
             r["seconds"], r["evaluations"]] + ([r.get("certified_lower")] if cert else []) for r in data["levels"]]
    what = (f"<p>{g['inputs']} inputs, ε = {data['epsilon']}, stopped: {data['stopped']}; final global L0 radius "
            f"{fmt(g['estimate'])} ± {fmt(g['radius'])} (lower {fmt(g['lower'])}, upper {fmt(g['upper'])}), "
            f"{g['converged']}/{g['inputs']} inputs converged. Fig. 1a shows input #{data['focus_index']}.</p>"
            "<p class='note'>Seconds per input (Fig. 1c) share each level's wall time out over the inputs it "
            "worked on in proportion to their grid points: inputs are evaluated together, so this is an "
            "attribution, not a measurement per input.</p>")
    part = data.get("partial_level")
    if part is not None:
        what += (f"<p>The run stopped part-way through level t = {part['t']}: bounds then {fmt(part['lower'])} … "
                 f"{fmt(part['upper'])} (estimate {fmt(part['estimate'])} ± {fmt(part['radius'])}); hollow markers "
                 "in Figs. 1a–1b, the last panel of Fig. 2.</p>")
    q = data["input_seconds"]
    qrows = [[r["t"], r["inputs"], r["min"], r["q1"], r["median"], r["q3"], r["max"]] for r in q]
    return [("Summary", what), ("Per level (Fig. 1b)", html_table(header, rows)),
            ("Seconds per input (Fig. 1c)", html_table(["t", "inputs", "min", "q1", "median", "q3", "max"], qrows))]
