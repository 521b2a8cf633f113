"""The work behind ``l0tre evaluate``, ``l0tre info`` and ``l0tre demo`` (see :mod:`l0tre.cli`)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import prepare
from ..classifier import Classifier
from ..data import Dataset, load_data
from ..engine import Engine, drive
from ..engine.options import DEFAULT_MAX_EVALUATIONS, DEFAULT_MAX_MEMORY
from ..models import load_model
from ..outdir import CHECKPOINT, RESULTS_JSON, json_safe, write_outputs
from ..paths import ENV_VAR
from ..result import Result

__all__ = ["cmd_demo", "cmd_evaluate", "cmd_info", "drive", "select_inputs"]

_SAFE_MAX_EVALUATIONS = 1 << 62  # `info` reports every level, however large


# -- small helpers --------------------------------------------------------------------------------
def _notice(args: argparse.Namespace, text: str) -> None:
    """A notice on stderr unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        print(f"l0tre: {text}", file=sys.stderr)


def _fmt_seconds(sec: float) -> str:
    """A duration for people: ms, s, min, h, days or years."""
    if not math.isfinite(sec):
        return "?"
    if sec < 1:
        return f"{sec * 1000:.0f} ms"
    if sec < 120:
        return f"{sec:.1f} s"
    if sec < 7200:
        return f"{sec / 60:.1f} min"
    if sec < 2 * 86400:
        return f"{sec / 3600:.1f} h"
    if sec < 2 * 365 * 86400:
        return f"{sec / 86400:.1f} days"
    return f"{sec / (365 * 86400):.3g} years"


def _seed(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def _without_env(name: str) -> Iterator[None]:
    """Temporarily remove an environment variable (the demo ignores ``$L0TRE_DATA``)."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM while the final files are written (restored afterwards)."""
    saved: list[tuple[signal.Signals, Any]] = []
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved.append((sig, signal.signal(sig, signal.SIG_IGN)))
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, handler in saved:
            signal.signal(sig, handler)


def _load_model(args: argparse.Namespace) -> Classifier:
    """``load_model`` with the CLI's model options."""
    return load_model(args.model, arch=args.arch, device=args.device, trust_pickle=args.trust_pickle,
                      data_root=args.data_root)


def select_inputs(model: Classifier, args: argparse.Namespace) -> Dataset:
    """Load ``--data`` with the selection options; ``--only-correct`` keeps correctly classified
    inputs (then ``--limit`` counts those)."""
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"limit: expected a positive integer, got {args.limit}")
    shape = model.input_shape
    data = load_data(args.data, data_root=args.data_root, limit=None if args.only_correct else args.limit,
                     indices=args.indices, start=args.start,
                     input_shape=(shape[0], shape[1], shape[2]) if shape is not None and len(shape) == 3 else None)
    for note in data.notes:
        _notice(args, f"data: {note}")
    if len(data) == 0:
        raise ValueError(f"data: expected at least one input, got none from {args.data!r} with this selection")
    check_forward(model, data.x)
    if not args.only_correct:
        return data
    if data.y is None:
        raise ValueError(f"only-correct: the data {args.data!r} has no labels")
    keep: list[torch.Tensor] = []
    found = 0
    for i in range(0, len(data), 512):
        ok = (model.predict(data.x[i : i + 512], batch_size=512) == data.y[i : i + 512]).nonzero().squeeze(1) + i
        keep.append(ok)
        found += int(ok.numel())
        if args.limit is not None and found >= args.limit:
            break
    sel = torch.cat(keep)[: args.limit]
    if sel.numel() == 0:
        raise ValueError(f"only-correct: the model classifies none of the selected inputs of {args.data!r} correctly")
    _notice(args, f"only-correct: kept {sel.numel()} correctly classified input(s)")
    return Dataset(x=data.x[sel], y=data.y[sel], indices=data.indices[sel], name=data.name,
                   notes=[*data.notes, f"only correctly classified inputs ({sel.numel()})"])


def check_forward(model: Classifier, x: torch.Tensor) -> None:
    """Run the model on one input; a shape mismatch becomes a one-line ``ValueError``."""
    try:
        out = model(x[:1])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"model: running it on the data's images of shape {tuple(x.shape[1:])} failed "
            f"(a model/data shape mismatch?): {first}"
        ) from exc
    if out.shape[1] < 2:
        raise ValueError(f"model output: expected scores for at least 2 classes, got shape {tuple(out.shape)}")


def _config(args: argparse.Namespace, model: Classifier, data: Dataset, engine: Engine,
            time_budget: float | None) -> dict[str, Any]:
    """The ``config`` block of results.json: every option plus what was resolved."""
    from .. import __version__

    options = {k: v for k, v in vars(args).items() if k not in ("command", "debug")}
    options["time_budget"] = time_budget
    module = model.modules()
    return json_safe({
        "command": args.command,
        **options,
        "model_name": model.name,
        "data_name": data.name,
        "data_notes": list(data.notes),
        "inputs": len(data),
        "input_shape": list(data.x.shape[1:]),
        "bounds": list(model.bounds),
        "output": model.output.value,
        "parameters": sum(p.numel() for p in module.parameters()) if module is not None else None,
        "n_features": engine.n_features,
        "batch_size_used": engine.batch_size,
        "mode_used": model.mode,
        "incremental_used": engine.uses_incremental,
        "device_used": str(model.device),
        "max_memory_used": engine.options.max_memory,
        "max_evaluations_used": engine.options.max_evaluations,
        "l0tre_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    })


def _summary_lines(res: Result, out: Path, report: Path | None) -> list[str]:
    """The final summary printed at the end of a run."""
    n = int(res.lower.numel())
    conv = int(res.converged.sum())
    where = "after level" if res.level_complete else "in level"
    t_text = f"t={res.t}" if res.level_complete or res.t == 0 else f"t={res.t + 1} (levels 1..{res.t} complete)"
    acc = "" if res.accuracy is None else f", accuracy {100 * res.accuracy:.1f}%"
    lines = [
        f"stopped: {res.stopped} {where} {t_text}; {conv}/{n} inputs converged; "
        f"{res.evaluations:,} model evaluations in {_fmt_seconds(res.seconds)}",
        f"global L0 radius: lower {res.global_lower:.3f}, upper {res.global_upper:.3f}, "
        f"estimate {res.estimate:.3f} ± {res.radius:.3f}{acc}",
    ]
    cert = res.global_certified_lower
    if cert is not None:
        lines.append(f"certified lower bound (all real values): {cert:.3f}")
    lines.append(f"results: {out / RESULTS_JSON}" + (f"; report: {report}" if report is not None else ""))
    return lines


def _write_report(args: argparse.Namespace, out: Path) -> Path | None:
    """Build the report; a failure is a notice (the results are already written)."""
    from ..report import build_report

    try:
        files = build_report(out)
    except KeyboardInterrupt:
        _notice(args, "report skipped (interrupted); rebuild it with `l0tre report DIR`")
        return None
    except Exception as exc:  # noqa: BLE001 - the run's results must not be lost to a plotting error
        if getattr(args, "debug", False):
            raise
        _notice(args, f"report failed ({type(exc).__name__}: {exc}); results are in {out / RESULTS_JSON}")
        return None
    return next((f for f in files if f.name == "index.html"), None)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``l0tre evaluate``: run, write outputs after every snapshot, report at the end."""
    _seed(args.seed)
    model = _load_model(args)
    data = select_inputs(model, args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: expected a folder, got the existing file {str(out)!r}")
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT
    if args.resume:
        if not ckpt.exists():
            _notice(args, f"resume: no checkpoint at {str(ckpt)!r}; starting from the beginning")
    elif ckpt.exists():
        ckpt.unlink()
    progress = None
    if not args.quiet:
        from ..progress import TqdmProgress

        tty = sys.stderr.isatty()
        progress = TqdmProgress(file=sys.stderr, mininterval=0.2 if tty else 10.0)
    engine = prepare(
        model, data.x, epsilon=args.epsilon, t_max=args.t_max, features=args.features,
        batch_size=args.batch_size, max_memory=args.max_memory or DEFAULT_MAX_MEMORY,
        checkpoint=ckpt, report_every=args.report_every, labels=data.y,
        max_evaluations=args.max_evaluations or DEFAULT_MAX_EVALUATIONS, progress=progress,
        certify="only" if getattr(args, "certify_only", False) else bool(getattr(args, "certify", False)),
        certify_time_limit=getattr(args, "certify_time_limit", 60.0), mode=getattr(args, "mode", "auto"),
        certify_method=getattr(args, "certify_method", "auto"),
    )
    if args.resume and ckpt.exists():
        _notice(args, f"resume: continuing from level t={engine.result.t + 1} "
                      f"({_fmt_seconds(engine.seconds_spent)} already spent)")
    if args.time_budget is not None:  # the budget counts for this invocation
        engine.set_time_budget(args.time_budget, from_now=True)
    config = _config(args, model, data, engine, args.time_budget)
    indices = [int(i) for i in data.indices]

    def on_snapshot(snap: Result) -> None:
        """Write the output files for this snapshot."""
        write_outputs(out, snap, indices, data.x, config)

    try:
        final = drive(engine, on_snapshot, guard=_signals_ignored)
    finally:
        if progress is not None:
            progress.close()
    if final.stopped == "interrupted":
        _notice(args, "interrupted: the current bounds are written")
    report = None if args.no_report else _write_report(args, out)
    stream = sys.stderr if args.json else sys.stdout
    if not (args.json and args.quiet):
        for line in _summary_lines(final, out, report):
            print(line, file=stream)
    if args.json:
        print(json.dumps(json.loads((out / RESULTS_JSON).read_text()), indent=1))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``l0tre demo``: the embedded paper-mnist model on the bundled MNIST images."""
    ns = argparse.Namespace(
        command="demo", model="paper-mnist", data="mnist:test", data_root=None, limit=args.limit, indices=None,
        start=0, only_correct=False, arch=None, trust_pickle=False, device=args.device, epsilon=0.5, t_max=2,
        features="pixel", batch_size=256, max_memory=None, max_evaluations=None, time_budget=args.time_budget,
        out=args.out, resume=False, report_every=5.0, seed=0, quiet=args.quiet, json=False, no_report=False,
        debug=args.debug,
    )
    if not args.quiet:
        print(f"l0tre demo: paper-mnist on {args.limit} bundled MNIST test images, t=1 then t=2, "
              f"time budget {_fmt_seconds(args.time_budget)} → {args.out}/", file=sys.stderr)
    with _without_env(ENV_VAR):  # only the embedded model and images
        code = cmd_evaluate(ns)
    print(f"demo output: {Path(args.out).resolve()} (open index.html)")
    return code


# -- info -----------------------------------------------------------------------------------------
def _warmup(model: Classifier, sample: torch.Tensor, rows: int, max_seconds: float = 2.0) -> tuple[float, int]:
    """Evaluations per second of the model's forward pass on batches of ``rows`` (1 warm-up
    batch, then up to 5 timed ones or ``max_seconds``); returns ``(rate, batches timed)``."""
    batch = sample[:1].expand(rows, *sample.shape[1:]).contiguous()
    model(batch)
    done, start = 0, time.perf_counter()
    while done < 5:
        model(batch)
        done += 1
        if time.perf_counter() - start >= max_seconds:
            break
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    elapsed = max(time.perf_counter() - start, 1e-9)
    return done * rows / elapsed, done


def cmd_info(args: argparse.Namespace) -> int:
    """``l0tre info``: model summary, evaluations per level and a time estimate."""
    model = _load_model(args)
    module = model.modules()
    params = sum(p.numel() for p in module.parameters()) if module is not None else None
    info: dict[str, Any] = {
        "model": model.name, "input_shape": list(model.input_shape) if model.input_shape else None,
        "bounds": list(model.bounds), "output": model.output.value,
        "preprocessing": None if model.preprocessing is None else dataclasses.asdict(model.preprocessing),
        "parameters": params, "device": str(model.device), "dtype": str(model.dtype).replace("torch.", ""),
    }
    levels: list[dict[str, Any]] = []
    if args.data is not None:
        data = select_inputs(model, args)
        engine = prepare(model, data.x, epsilon=args.epsilon, t_max=args.t_max, features=args.features,
                         batch_size=args.batch_size, max_memory=args.max_memory or DEFAULT_MAX_MEMORY,
                         labels=data.y, max_evaluations=_SAFE_MAX_EVALUATIONS)
        limit = args.max_evaluations or DEFAULT_MAX_EVALUATIONS
        sample = data.x
        classes = int(model(sample[:1]).shape[1])
        rate, batches = _warmup(model, sample, engine.batch_size)
        for t in range(1, min(args.t_max, engine.n) + 1):
            ev = engine.level_evaluations(t)
            levels.append({"t": t, "subsets": math.comb(engine.n, t), "evaluations": ev,
                           "seconds_estimate": ev / rate, "over_max_evaluations": ev > limit})
        res = engine.result
        info.update({
            "classes": classes, "data": data.name, "inputs": len(data), "labels": data.y is not None,
            "accuracy": res.accuracy, "features": args.features, "n_features": engine.n_features,
            "epsilon": args.epsilon, "grid_values": engine.opts.steps + 1, "batch_size": engine.batch_size,
            "evaluations_per_second": rate, "warmup_batches": batches, "levels": levels,
            "max_evaluations": limit,
        })
    if args.json:
        print(json.dumps(json_safe(info), indent=1))
        return 0
    shape = "x".join(map(str, model.input_shape)) if model.input_shape else "unknown (from the data)"
    pre = "none" if model.preprocessing is None else f"mean {model.preprocessing.mean}, std {model.preprocessing.std}"
    print(f"model        {model.name}")
    print(f"input        {shape}, values in [{model.bounds[0]:g}, {model.bounds[1]:g}], preprocessing {pre}")
    print(f"output       {model.output.value}" + (f", {info['classes']} classes" if "classes" in info else ""))
    print(f"parameters   {params:,}" if params is not None else "parameters   unknown (not a torch module)")
    print(f"device       {model.device} ({info['dtype']})")
    if args.data is None:
        print("levels       pass --data SPEC to count the model evaluations per level")
        return 0
    acc = "" if info["accuracy"] is None else f", accuracy {100 * info['accuracy']:.1f}%"
    print(f"data         {info['data']}: {info['inputs']} input(s), labels {'yes' if info['labels'] else 'no'}{acc}")
    print(f"features     {args.features}: n = {info['n_features']:,}; epsilon {args.epsilon:g} → "
          f"{info['grid_values']} grid values per channel")
    print(f"batch        {info['batch_size']:,} rows per model call")
    print(f"warm-up      {rate:,.0f} evaluations/s ({batches} batch(es) of {info['batch_size']:,}, forward pass only)")
    print()
    print(f"{'level':<7}{'subsets C(n,t)':>18}{'evaluations':>20}   time estimate")
    total_ev, total_s = 0, 0.0
    for lv in levels:
        flag = "   (over --max-evaluations: refused)" if lv["over_max_evaluations"] else ""
        print(f"t={lv['t']:<5}{lv['subsets']:>18,}{lv['evaluations']:>20,}   "
              f"{_fmt_seconds(lv['seconds_estimate'])}{flag}")
        total_ev += lv["evaluations"]
        total_s += lv["seconds_estimate"]
    print(f"{'total':<7}{'':>18}{total_ev:>20,}   {_fmt_seconds(total_s)}")
    print("(sensitivity passes before pruning; the upper-bound search adds a little, converged inputs "
          "drop out; the estimate times the model's forward pass only)")
    return 0
