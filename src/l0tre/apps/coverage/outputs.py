"""The output folder of ``l0tre coverage``: ``results.json``, ``tests.npz``, the figures of
:mod:`.figures` and ``index.html``. Every file is written atomically; ``results.json`` last."""

from __future__ import annotations

import html
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...atomic import atomic_write_bytes, atomic_write_text, make_folder
from .figures import FIGURES, draw_coverage_figures
from .result import CoverageResult

__all__ = ["COVERAGE_FILES", "write_coverage_outputs"]

COVERAGE_FILES = ("results.json", "tests.npz", "index.html", *FIGURES)


def _npz(res: CoverageResult) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, x=res.x.numpy().astype(np.float32), seed=res.seed.numpy().astype(np.int64),
                        l0=res.l0.numpy().astype(np.int64), label=res.label.numpy().astype(np.int64),
                        seed_label=res.seed_label.numpy().astype(np.int64),
                        test_of=res.test_of.numpy().astype(np.int64))
    return buf.getvalue()


def _html(payload: dict[str, Any]) -> str:
    cov = payload["coverage"]
    tests = payload["tests"]
    rows = "".join(f"<tr><td>{html.escape(str(r['layer']))}</td><td>{html.escape(str(r['after_node']))}</td>"
                   f"<td>{r['neurons']}</td><td>{r['before']}</td><td>{r['after']}</td><td>{r['unreachable']}</td></tr>"
                   for r in cov["per_layer"])
    levels = "".join(f"<tr><td>{r['t']}</td><td>{html.escape(r['mode'])}</td><td>{r['evaluations']}</td>"
                     f"<td>{r['covered']}</td><td>{r['seconds']}</td></tr>" for r in payload["levels"])
    figs = "".join(f'<p><img src="{name}" alt="{name}"></p>' for name in FIGURES)
    proofs = _proofs_html(cov)
    cfg = html.escape(json.dumps(payload["config"]))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>l0tre coverage</title>"
            f"<style>body{{font-family:sans-serif;max-width:60em;margin:auto}}td,th{{padding:2px 8px}}"
            f"img{{max-width:100%}}</style></head><body><h1>Neuron coverage ({html.escape(cov['neurons'])})</h1>"
            f"<p>{cov['total']} neurons, threshold {cov['threshold']}: seeds {100 * cov['before']:.2f} % &rarr; "
            f"with the tests {100 * cov['after']:.2f} %; {cov['unreachable']} proven unreachable "
            f"({100 * cov['after_of_reachable']:.2f} % of the others covered).</p>"
            f"<p>{tests['count']} tests, mean L0 {tests['mean_l0']}, {tests['adversarial']} of them change the "
            f"seed's label (adversarial examples). Stopped: {html.escape(payload['stopped'])} after "
            f"{payload['seconds']} s.</p><table border=1><tr><th>layer</th><th>after</th><th>neurons</th>"
            f"<th>seeds</th><th>with tests</th><th>unreachable</th></tr>{rows}</table>{proofs}<h2>Levels</h2>"
            f"<table border=1><tr><th>t</th><th>mode</th><th>candidates</th><th>covered</th><th>s</th></tr>"
            f"{levels}</table>{figs}<p><code>{cfg}</code></p></body></html>\n")


def _proofs_html(cov: dict[str, Any]) -> str:
    """The open neurons' proven upper bounds and the ``--certify`` result, as HTML."""
    out = ""
    ub = cov.get("open_upper_bounds") or {}
    if ub:
        items = ", ".join(f"{html.escape(k)} &le; {v:.3g}" for k, v in ub.items())
        out += (f"<p>Neither covered nor proven unreachable: {len(ub)}; best proven upper bounds of their "
                f"values over the whole input domain: {items}.</p>")
    nc = cov.get("not_coverable")
    if nc:
        names = ", ".join(html.escape(n) for n in nc["neurons"][:50]) + (" &hellip;" if nc["count"] > 50 else "")
        out += (f"<h2>Not coverable within L0 &le; {nc['t']}</h2><p>{nc['count']} of the {nc['examined']} neurons "
                f"not covered within L0 &le; {nc['t']} (and not unreachable) are <b>proven</b> not coverable: no "
                f"change of at most {nc['t']} pixels of any seed, to any real values in the input range, makes "
                f"them fire ({nc['uncovered_count']} of them are still uncovered; the others have a test of more "
                f"pixels). {nc.get('revoked', 0)} proofs revoked by the spot check"
                f"{'' if nc.get('certify_complete', True) else '; the time limit cut the proofs short'}. "
                f"{names}</p>")
    return out


def write_coverage_outputs(out_dir: str | os.PathLike[str], res: CoverageResult, seeds: torch.Tensor,
                           bounds: tuple[float, float], config: dict[str, Any], *,
                           figures: bool = True) -> dict[str, Any]:
    """Write the folder; returns the ``results.json`` payload.

    Args:
        out_dir: the folder (created if needed).
        res: the result; ``seeds`` ``(N, C, H, W)`` its seeds (for the figure of the tests).
        bounds: the model's input range (for drawing).
        config: the run's options (``results.json``'s ``config``).
        figures: draw the PNG figures and ``index.html``.

    Raises:
        OutputError: a file cannot be written.
    """
    out = make_folder(out_dir)
    payload = {"config": config, **res.to_dict()}
    atomic_write_bytes(out / "tests.npz", _npz(res))
    if figures:
        draw_coverage_figures(res, seeds, bounds, Path(out))
        atomic_write_text(out / "index.html", _html(payload))
    atomic_write_text(out / "results.json", json.dumps(payload, indent=1, allow_nan=False) + "\n")
    return payload
