"""Output folders of ``l0tre evaluate`` and ``l0tre attack``: file names, writing (always
atomic: :mod:`l0tre.atomic`) and reading back.

``l0tre evaluate`` (:func:`write_outputs`):

* ``results.json`` — ``{"config", "global", "inputs", ...}`` (the pinned schema);
* ``per_input.csv`` — one row per input;
* ``adversarial.npz`` — ``index``, ``x_adv`` (and ``x``, ``label``, ``adversarial_label``,
  ``predicted``, ``l0``) for the inputs with a found adversarial example;
* ``result.pt`` — the full :class:`~l0tre.result.Result` (``Result.load``);
* ``checkpoint.pt`` — the engine's resumable state (written by the engine itself).

``l0tre attack`` (:func:`write_attack_outputs`):

* ``results.json`` — ``config``, ``global`` (success_rate, mean / median / std L0,
  seconds_per_image, ...) and one row per input (``index`` in the source set, ``label``,
  ``predicted``, ``success``, ``l0``, ``adversarial_label``);
* ``adversarial.npz`` — ``index`` (int64), ``x_adv`` (float32 ``(N, C, H, W)``, the original
  where the attack failed) and ``success`` (bool);
* ``examples.png`` — up to 8 successful inputs: original | adversarial | difference.

The report (:mod:`l0tre.report`) is rebuilt from these files alone, through :func:`read_results`
and :func:`read_adversarial`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .atomic import OutputError, atomic_write_bytes, atomic_write_text, check_writable_folder, make_folder
from .figures import write_attack_examples
from .readers.arrays import array_file_kind
from .result import Result

if TYPE_CHECKING:  # the applications are a higher layer: only their type is named here
    from .apps.attack.result import AttackResult

__all__ = [
    "ADVERSARIAL_NPZ",
    "ATTACK_FILES",
    "CHECKPOINT",
    "CSV_COLUMNS",
    "EXAMPLES_PNG",
    "OUTPUT_FILES",
    "PER_INPUT_CSV",
    "RESULTS_JSON",
    "RESULT_PT",
    "RUN_FILES",
    "OutputError",
    "check_writable_folder",
    "json_safe",
    "l0_distance",
    "read_adversarial",
    "read_per_input",
    "read_results",
    "remove_run_files",
    "results_dict",
    "run_files",
    "write_attack_examples",
    "write_attack_outputs",
    "write_outputs",
]

RESULTS_JSON = "results.json"
PER_INPUT_CSV = "per_input.csv"
ADVERSARIAL_NPZ = "adversarial.npz"
RESULT_PT = "result.pt"
CHECKPOINT = "checkpoint.pt"
EXAMPLES_PNG = "examples.png"
#: the data files of an ``l0tre evaluate`` folder (the report links those that exist)
OUTPUT_FILES = (RESULTS_JSON, PER_INPUT_CSV, ADVERSARIAL_NPZ, RESULT_PT)
#: what an ``l0tre evaluate`` run leaves: its checkpoint and data files
RUN_FILES = (CHECKPOINT, *OUTPUT_FILES)
#: what an ``l0tre attack`` run leaves
ATTACK_FILES = (RESULTS_JSON, ADVERSARIAL_NPZ, EXAMPLES_PNG)

CSV_COLUMNS = (
    "index", "row", "label", "predicted", "lower", "upper", "lower_kind", "converged",
    "found", "adversarial_label", "certified_lower", "lower_claimed",
    "upper_claimed",
)
_CSV_INTS = ("index", "row", "label", "predicted", "lower", "upper", "adversarial_label", "certified_lower")
_CSV_BOOLS = ("converged", "found", "lower_claimed", "upper_claimed")


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


# -- the folder --------------------------------------------------------------------------------------
def run_files(directory: str | os.PathLike[str]) -> list[str]:
    """The files of an earlier run (``l0tre evaluate`` or ``l0tre attack``) in ``directory``:
    the names of :data:`RUN_FILES` and :data:`ATTACK_FILES` that exist there, checkpoint first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return [name for name in dict.fromkeys((*RUN_FILES, *ATTACK_FILES)) if (d / name).exists()]


def remove_run_files(directory: str | os.PathLike[str], *, argument: str | None = None) -> list[str]:
    """Delete the files of an earlier run (:func:`run_files`) from ``directory``; returns their names.

    Raises:
        OutputError: a file cannot be deleted.
    """
    names = run_files(directory)
    for name in names:
        path = Path(directory) / name
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise OutputError.from_os_error(exc, path, action="remove", argument=argument) from exc
    return names


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

    Raises:
        OutputError: the folder or a file cannot be written (an ``OSError``; the message names
            the path).
    """
    out = make_folder(out_dir)
    data = results_dict(result, indices, config)
    atomic_write_bytes(out / ADVERSARIAL_NPZ, _npz_bytes(result, indices, x))
    atomic_write_text(out / PER_INPUT_CSV, _csv_text(data["inputs"]))
    result.save(out / RESULT_PT)
    # results.json last: when it exists, the files it describes are there too
    atomic_write_text(out / RESULTS_JSON, json.dumps(data, indent=1, allow_nan=False) + "\n")
    return data


# -- l0tre attack -----------------------------------------------------------------------------------
def write_attack_outputs(
    out_dir: str | os.PathLike[str],
    res: AttackResult,
    x: torch.Tensor,
    indices: torch.Tensor,
    config: dict[str, Any],
) -> dict[str, Any]:
    """Write ``results.json``, ``adversarial.npz`` and ``examples.png`` of ``l0tre attack``.

    Args:
        out_dir: the output folder (created if needed).
        res: the attack result.
        x: ``(N, C, H, W)`` the original inputs.
        indices: ``(N,)`` their positions in the source data set.
        config: the command's options (merged in front of the result's own ``config``).

    Returns:
        the ``results.json`` payload.

    Raises:
        OutputError: the folder or a file cannot be written.
    """
    out = make_folder(out_dir)
    payload = res.to_dict()
    payload["config"] = {**config, **payload["config"]}
    for row, idx in zip(payload["inputs"], indices.tolist(), strict=True):
        row["index"] = int(idx)
    atomic_write_text(out / RESULTS_JSON, json.dumps(payload, indent=1))
    buf = io.BytesIO()
    np.savez_compressed(buf, index=indices.numpy().astype(np.int64), x_adv=res.x_adv.numpy().astype(np.float32),
                        success=res.success.numpy())
    atomic_write_bytes(out / ADVERSARIAL_NPZ, buf.getvalue())
    write_attack_examples(out / EXAMPLES_PNG, x, res)
    return payload


# -- reading back -----------------------------------------------------------------------------------
def read_results(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``DIR/results.json`` as a dict (checked to have ``global`` and ``inputs``).

    Raises:
        FileNotFoundError: no such folder or no results.json in it.
        ValueError: the file is not a readable l0tre results file.
    """
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(
            f"report: expected an output folder of `l0tre evaluate`, got {str(d)!r} (no such folder)"
        )
    path = d / RESULTS_JSON
    if not path.is_file():
        raise FileNotFoundError(
            f"report: expected {RESULTS_JSON} in {str(d)!r}, got no such file (run `l0tre evaluate --out {d}` first)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"report: {str(path)!r} is not readable JSON ({exc})") from exc
    if not (isinstance(data, dict) and isinstance(data.get("global"), dict) and isinstance(data.get("inputs"), list)):
        raise ValueError(f"report: {str(path)!r} is not an l0tre results file (needs 'global' and 'inputs')")
    return data


def read_adversarial(directory: str | os.PathLike[str]) -> dict[str, np.ndarray] | None:
    """``DIR/adversarial.npz`` as a dict of arrays, or ``None`` when the folder has none.

    Raises:
        ValueError: the file is unreadable or lacks ``x_adv`` / ``index`` (the message names
            the file and says why).
    """
    path = Path(directory) / ADVERSARIAL_NPZ
    if not path.is_file():
        return None
    try:
        if array_file_kind(path) != "npz":
            raise ValueError("not a valid .npz file: it does not start like a zip archive")
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path.name} is not readable ({exc})") from exc
    if "x_adv" not in arrays or "index" not in arrays:
        raise ValueError(f"{path.name} lacks 'x_adv'/'index'")
    return arrays


def read_per_input(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """``DIR/per_input.csv`` as rows typed like the ``inputs`` of results.json (integers,
    booleans; an empty cell is ``None``).

    Raises:
        FileNotFoundError: no per_input.csv in the folder.
        ValueError: a cell is not of its column's type.
    """
    text = (Path(directory) / PER_INPUT_CSV).read_text(encoding="utf-8")
    rows: list[dict[str, Any]] = []
    for raw in csv.DictReader(io.StringIO(text)):
        row: dict[str, Any] = {}
        for key, cell in raw.items():
            if cell == "" or cell is None:
                row[key] = None
            elif key in _CSV_INTS:
                row[key] = int(cell)
            elif key in _CSV_BOOLS:
                if cell not in ("True", "False"):
                    raise ValueError(f"{PER_INPUT_CSV}: expected True or False in column {key!r}, got {cell!r}")
                row[key] = cell == "True"
            else:
                row[key] = cell
        rows.append(row)
    return rows
