"""The output folder of ``l0tre saliency``: ``saliency.npz``, ``results.json``, PNG figures and
``index.html`` (every file written atomically)."""

from __future__ import annotations

import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...atomic import atomic_write_bytes, atomic_write_text, make_folder
from .plots import draw_grid, draw_image
from .result import SaliencyResult

__all__ = ["GRID", "NPZ", "RESULTS", "write_saliency_outputs"]

NPZ, RESULTS, GRID, INDEX = "saliency.npz", "results.json", "saliency_grid.png", "index.html"
_GRID_ROWS = 8


def _title(res: SaliencyResult, i: int, index: int) -> str:
    lab = "" if res.labels is None else f", label {int(res.labels[i])}"
    return f"#{index}: predicted {int(res.predicted[i])}{lab}"


def write_saliency_outputs(out: Path, res: SaliencyResult, x: torch.Tensor, indices: Sequence[int],
                           config: dict[str, Any], bounds: tuple[float, float], figures: int) -> dict[str, Any]:
    """Write the folder ``out``; ``x`` ``(N, C, H, W)`` the inputs, ``indices`` their positions in
    the data set, ``figures`` how many per-image PNGs (the first ones). Returns results.json."""
    make_folder(out)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x.numpy(), indices=np.asarray(indices, dtype=np.int64), **res.arrays())
    atomic_write_bytes(out / NPZ, buf.getvalue())
    payload = res.to_dict()
    for row, idx in zip(payload["inputs"], indices, strict=True):
        row["data_index"] = int(idx)
    payload["config"] = config
    unit = res.score
    xs, sens, flips = x.numpy(), res.sensitivity.numpy(), res.flips.numpy()
    shown = min(figures, res.n_inputs)
    names = []
    for i in range(shown):
        name = f"saliency_{i:03d}.png"
        draw_image(out / name, xs[i], sens[i], flips[i], bounds, unit, _title(res, i, int(indices[i])))
        names.append(name)
    rows = min(_GRID_ROWS, res.n_inputs)
    draw_grid(out / GRID, xs[:rows], sens[:rows], flips[:rows], bounds, unit,
              [_title(res, i, int(indices[i])) for i in range(rows)])
    payload["figures"] = [GRID, *names]
    atomic_write_text(out / RESULTS, json.dumps(payload, indent=1, allow_nan=True))
    atomic_write_text(out / INDEX, _page(payload, names))
    return payload


def _page(payload: dict[str, Any], names: list[str]) -> str:
    """``index.html``: the claims, the grid and one row per input."""
    s = payload["summary"]
    claim = ("every pixel and every grid colour was searched: <b>lower</b> is a proven bound on the grid"
             if s["lower_bound_claimed"] else
             "a pixel selection or one baseline colour was searched: <b>no lower bound is claimed</b>; "
             "flipping pixels and <b>upper</b> are verified on the model")
    head = (f"<h1>l0tre saliency</h1><p>{s['inputs']} input(s), score <b>{html.escape(s['score'])}</b> drop "
            f"(raw units, no normalisation or clipping), epsilon {s['epsilon']}, pixels "
            f"<b>{html.escape(str(s['pixels']))}</b>, precision {s['precision']}, {s['seconds']:.2f} s.</p>"
            f"<p>{claim}. Flipping pixels: {s['flipping_pixels']} in {s['inputs_with_flip']} input(s); every one "
            "re-checked in a plain float32 forward pass.</p>")
    cells = ["<tr><th>#</th><th>data index</th><th>label</th><th>predicted</th><th>base score</th>"
             "<th>max sensitivity</th><th>flipping pixels</th><th>lower</th><th>upper</th><th>figure</th></tr>"]
    for i, r in enumerate(payload["inputs"]):
        fig = f'<img src="{names[i]}" width="540">' if i < len(names) else ""
        vals = [i, r["data_index"], r["label"], r["predicted"], f"{r['base_score']:.4g}",
                "" if r["max_sensitivity"] is None else f"{r['max_sensitivity']:.4g}", r["flipping_pixels"],
                "not claimed" if r["lower"] is None else r["lower"], r["upper"]]
        cells.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in vals) + f"<td>{fig}</td></tr>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>l0tre saliency</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:3px 6px}"
            "table{border-collapse:collapse}</style></head><body>" + head
            + f'<h2>Grid</h2><img src="{GRID}" width="720"><h2>Inputs</h2><table>' + "".join(cells)
            + "</table></body></html>\n")
