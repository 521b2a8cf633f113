"""``l0tre info``: model summary, model evaluations per level and a time estimate."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from typing import Any

import torch

from ..api import prepare
from ..classifier import Classifier
from ..outdir import json_safe
from .common import default_max_evaluations, fmt_seconds, load_classifier, select_inputs
from .parsing import EXIT_OK, Subparsers, add_engine_options, add_source_options, common_options

__all__ = ["add_parser", "run"]

_SAFE_MAX_EVALUATIONS = 1 << 62  # `info` reports every level, however large
_WARMUP_BATCHES = 5


def add_parser(subparsers: Subparsers) -> None:
    """Register ``info`` and its options."""
    info = subparsers.add_parser(
        "info", parents=[common_options()], help="model summary, evaluations per level, time estimate",
        description="Model summary and the number of model evaluations each level needs, "
                    "with a time estimate from a short warm-up.")
    add_source_options(info, data_required=False)
    add_engine_options(info)
    info.add_argument("--quiet", action="store_true", help="no notices")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    """``l0tre info``: print the summary (as text, or as JSON with ``--json``)."""
    model = load_classifier(args)
    info = _model_info(model)
    if args.data is not None:
        info.update(_data_info(model, args))
    if args.json:
        print(json.dumps(json_safe(info), indent=1))
    else:
        _print_info(info, model, args)
    return EXIT_OK


def _model_info(model: Classifier) -> dict[str, Any]:
    """What is known of the model alone."""
    module = model.modules()
    return {
        "model": model.name, "input_shape": list(model.input_shape) if model.input_shape else None,
        "bounds": list(model.bounds), "output": model.output.value,
        "preprocessing": None if model.preprocessing is None else dataclasses.asdict(model.preprocessing),
        "parameters": sum(p.numel() for p in module.parameters()) if module is not None else None,
        "device": str(model.device), "dtype": str(model.dtype).replace("torch.", ""),
    }


def _warmup(model: Classifier, sample: torch.Tensor, rows: int, max_seconds: float = 2.0) -> tuple[float, int]:
    """Evaluations per second of the model's forward pass on batches of ``rows`` (1 warm-up
    batch, then up to 5 timed ones or ``max_seconds``); returns ``(rate, batches timed)``."""
    batch = sample[:1].expand(rows, *sample.shape[1:]).contiguous()
    model(batch)
    done, start = 0, time.perf_counter()
    while done < _WARMUP_BATCHES:
        model(batch)
        done += 1
        if time.perf_counter() - start >= max_seconds:
            break
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    elapsed = max(time.perf_counter() - start, 1e-9)
    return done * rows / elapsed, done


def _data_info(model: Classifier, args: argparse.Namespace) -> dict[str, Any]:
    """The data, the feature space, the warm-up rate and the evaluations of each level."""
    data = select_inputs(model, args)
    limits = {"max_memory": args.max_memory} if args.max_memory else {}
    engine = prepare(model, data.x, epsilon=args.epsilon, t_max=args.t_max, features=args.features,
                     batch_size=args.batch_size, labels=data.y, max_evaluations=_SAFE_MAX_EVALUATIONS, **limits)
    limit = args.max_evaluations or default_max_evaluations()
    classes = int(model(data.x[:1]).shape[1])
    rate, batches = _warmup(model, data.x, engine.batch_size)
    n = engine.n_features
    levels: list[dict[str, Any]] = []
    for t in range(1, min(args.t_max, n) + 1):
        ev = engine.level_evaluations(t)
        levels.append({"t": t, "subsets": math.comb(n, t), "evaluations": ev,
                       "seconds_estimate": ev / rate, "over_max_evaluations": ev > limit})
    return {
        "classes": classes, "data": data.name, "inputs": len(data), "labels": data.y is not None,
        "accuracy": engine.result.accuracy, "features": args.features, "n_features": n,
        "epsilon": args.epsilon, "grid_values": engine.options.steps + 1, "batch_size": engine.batch_size,
        "evaluations_per_second": rate, "warmup_batches": batches, "levels": levels,
        "max_evaluations": limit,
    }


def _print_info(info: dict[str, Any], model: Classifier, args: argparse.Namespace) -> None:
    """The summary as text."""
    shape = "x".join(map(str, model.input_shape)) if model.input_shape else "unknown (from the data)"
    pre = "none" if model.preprocessing is None else f"mean {model.preprocessing.mean}, std {model.preprocessing.std}"
    params = info["parameters"]
    print(f"model        {model.name}")
    print(f"input        {shape}, values in [{model.bounds[0]:g}, {model.bounds[1]:g}], preprocessing {pre}")
    print(f"output       {model.output.value}" + (f", {info['classes']} classes" if "classes" in info else ""))
    print(f"parameters   {params:,}" if params is not None else "parameters   unknown (not a torch module)")
    print(f"device       {model.device} ({info['dtype']})")
    if args.data is None:
        print("levels       pass --data SPEC to count the model evaluations per level")
        return
    acc = "" if info["accuracy"] is None else f", accuracy {100 * info['accuracy']:.1f}%"
    print(f"data         {info['data']}: {info['inputs']} input(s), labels {'yes' if info['labels'] else 'no'}{acc}")
    print(f"features     {args.features}: n = {info['n_features']:,}; epsilon {args.epsilon:g} → "
          f"{info['grid_values']} grid values per channel")
    print(f"batch        {info['batch_size']:,} rows per model call")
    print(f"warm-up      {info['evaluations_per_second']:,.0f} evaluations/s ({info['warmup_batches']} batch(es) "
          f"of {info['batch_size']:,}, forward pass only)")
    print()
    _print_levels(info["levels"])


def _print_levels(levels: list[dict[str, Any]]) -> None:
    """The per-level table with its total."""
    print(f"{'level':<7}{'subsets C(n,t)':>18}{'evaluations':>20}   time estimate")
    total_ev, total_s = 0, 0.0
    for lv in levels:
        flag = "   (over --max-evaluations: refused)" if lv["over_max_evaluations"] else ""
        print(f"t={lv['t']:<5}{lv['subsets']:>18,}{lv['evaluations']:>20,}   "
              f"{fmt_seconds(lv['seconds_estimate'])}{flag}")
        total_ev += lv["evaluations"]
        total_s += lv["seconds_estimate"]
    print(f"{'total':<7}{'':>18}{total_ev:>20,}   {fmt_seconds(total_s)}")
    print("(sensitivity passes before pruning; the upper-bound search adds a little, converged inputs "
          "drop out; the estimate times the model's forward pass only)")
