"""The files ``l0tre evaluate`` writes into its output folder, all written atomically.

* ``results.json`` — ``{"config", "global", "inputs", ...}`` (the pinned schema);
* ``per_input.csv`` — one row per input;
* ``adversarial.npz`` — ``index``, ``x_adv`` (and ``x``, ``label``, ``adversarial_label``,
  ``predicted``, ``l0``) for the inputs with a found adversarial example;
* ``result.pt`` — the full :class:`~l0tre.result.Result` (``Result.load``).

The report (:mod:`l0tre.report`) is rebuilt from these files alone.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write_bytes, atomic_write_text
from .result import Result

__all__ = [
    "ADVERSARIAL_NPZ",
    "CHECKPOINT",
    "CSV_COLUMNS",
    "PER_INPUT_CSV",
    "RESULTS_JSON",
    "RESULT_PT",
    "json_safe",
    "results_dict",
    "write_outputs",
]

RESULTS_JSON = "results.json"
PER_INPUT_CSV = "per_input.csv"
ADVERSARIAL_NPZ = "adversarial.npz"
RESULT_PT = "result.pt"
CHECKPOINT = "checkpoint.pt"

CSV_COLUMNS = (
    "index", "row", "label", "predicted", "lower", "upper", "lower_kind", "converged",
    "found", "adversarial_label", "certified_lower",
)


def json_safe(value: Any) -> Any:
    """``value`` with NaN/Inf floats replaced by ``None`` and tuples by lists (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return json_safe(float(value))
    return value


def results_dict(result: Result, indices: Sequence[int], config: dict[str, Any]) -> dict[str, Any]:
    """The content of ``results.json``.

    Args:
        result: a snapshot of the run.
        indices: each input's position in the source data set (``Dataset.indices``).
        config: the options of the run (written under ``"config"``).

    Raises:
        ValueError: ``indices`` does not have one entry per input.
    """
    n = int(result.lower.numel())
    if len(indices) != n:
        raise ValueError(f"indices: expected {n} source positions, got {len(indices)}")
    d = result.to_dict()
    rows = d.pop("inputs")
    for row, idx in zip(rows, indices, strict=True):
        row["row"] = row["index"]  # position within this run
        row["index"] = int(idx)    # position in the source data set
    glob = d.pop("global")
    out: dict[str, Any] = {"config": config, "global": glob, "inputs": rows}
    out.update(d)
    return dict(json_safe(out))


def _csv_text(rows: list[dict[str, Any]]) -> str:
    """per_input.csv content from the results.json input rows."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    return buf.getvalue()


def l0_distance(x_adv: torch.Tensor, x: torch.Tensor, features: str) -> torch.Tensor:
    """``(K,)`` number of changed features (a pixel counts once over its channels)."""
    changed = x_adv != x
    if features == "pixel":
        return changed.any(1).flatten(1).sum(1)
    return changed.flatten(1).sum(1)


def _npz_bytes(result: Result, indices: Sequence[int], x: torch.Tensor) -> bytes:
    """adversarial.npz content: the inputs with a found example."""
    found = result.found.to(torch.bool)
    sel = found.nonzero().squeeze(1)
    idx = torch.as_tensor(list(indices), dtype=torch.int64)
    x_sel = x.detach().cpu()[sel].to(torch.float32)
    adv = result.adversarial.detach().cpu()[sel].to(torch.float32)
    labels = result.labels
    arrays: dict[str, Any] = {
        "index": idx[sel].numpy().astype(np.int64),
        "row": sel.numpy().astype(np.int64),
        "x_adv": adv.numpy(),
        "x": x_sel.numpy(),
        "predicted": result.predicted[sel].numpy().astype(np.int64),
        "adversarial_label": result.adversarial_label[sel].numpy().astype(np.int64),
        "label": (labels[sel].numpy().astype(np.int64) if labels is not None
                  else np.full(len(sel), -1, dtype=np.int64)),
        "l0": l0_distance(adv, x_sel, result.features).numpy().astype(np.int64),
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def write_outputs(
    out_dir: str | os.PathLike[str],
    result: Result,
    indices: Sequence[int],
    x: torch.Tensor,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Write ``results.json``, ``per_input.csv``, ``adversarial.npz`` and ``result.pt``.

    Args:
        out_dir: the output folder (created if needed).
        result: the snapshot to write.
        indices: source positions of the inputs.
        x: ``(N, C, H, W)`` the original inputs (saved beside their adversarial examples).
        config: the run's options.

    Returns:
        the dict written to ``results.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = results_dict(result, indices, config)
    atomic_write_bytes(out / ADVERSARIAL_NPZ, _npz_bytes(result, indices, x))
    atomic_write_text(out / PER_INPUT_CSV, _csv_text(data["inputs"]))
    result.save(out / RESULT_PT)
    # results.json last: when it exists, the files it describes are there too
    atomic_write_text(out / RESULTS_JSON, json.dumps(data, indent=1, allow_nan=False) + "\n")
    return data
