"""``l0tre evaluate``: bounds on the maximum safe L0 radius of a model on a data set.

Writes results.json, per_input.csv, adversarial.npz and result.pt into ``--out`` after every
snapshot (:func:`l0tre.outdir.write_outputs`), then the report (:mod:`l0tre.report`). A folder
that holds a run is never replaced by accident: without ``--resume`` (continue it) or
``--overwrite`` (start over) the command refuses it. A folder that cannot be written is one line
naming ``--out``, before the run starts when possible.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from ..api import prepare
from ..classifier import Classifier
from ..data import Dataset
from ..engine import Engine, Executor, drive
from ..outdir import (
    CHECKPOINT,
    RESULTS_JSON,
    check_writable_folder,
    json_safe,
    read_results,
    remove_run_files,
    write_outputs,
)
from ..progress import TqdmProgress
from ..result import Result
from .common import (
    fmt_seconds,
    load_classifier,
    notice,
    output_errors,
    ray_executor,
    refuse_to_replace,
    seed_everything,
    select_inputs,
    signals_ignored,
)
from .parsing import (
    EXIT_OK,
    Subparsers,
    add_engine_options,
    add_ray_options,
    add_source_options,
    argtype,
    common_options,
    parse_duration,
)

__all__ = ["add_parser", "run"]


# -- parser ---------------------------------------------------------------------------------------
def add_parser(subparsers: Subparsers) -> None:
    """Register ``evaluate`` and its options."""
    ev = subparsers.add_parser(
        "evaluate", parents=[common_options()], help="bounds on the maximum safe L0 radius",
        description="Evaluate a model on a data set; writes results.json, per_input.csv, adversarial.npz and a "
                    "report to --out. A --out folder that holds a run is refused unless --resume (continue it "
                    "from DIR/checkpoint.pt) or --overwrite (start over). In Python the same is "
                    "l0tre.evaluate(..., checkpoint=PATH): a checkpoint of the same model, inputs and options "
                    "is resumed, one of another run is refused with a ValueError.")
    add_source_options(ev, data_required=True)
    add_engine_options(ev)
    g = ev.add_argument_group("run")
    g.add_argument("--time-budget", type=argtype(parse_duration), metavar="DURATION",
                   help="stop after this long (90, 90s, 10m, 1h) with the current bounds")
    g.add_argument("--out", default="l0tre-results", metavar="DIR", help="output folder (default ./l0tre-results)")
    again = g.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in DIR from DIR/checkpoint.pt (same model, data and options; "
                            "anything else is an error)")
    again.add_argument("--overwrite", action="store_true",
                       help="start over: delete the earlier run's files in DIR (checkpoint, results)")
    g.add_argument("--report-every", type=float, default=5.0, metavar="SEC",
                   help="seconds between snapshots (and output writes) inside a level")
    g.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    g.add_argument("--quiet", action="store_true", help="no progress bar and no notices")
    g.add_argument("--json", action="store_true", help="print the final results.json to stdout")
    g.add_argument("--no-report", action="store_true", help="skip the PNG/HTML report")
    c = ev.add_argument_group("certification and speed")
    c.add_argument("--certify", action="store_true",
                   help="also prove lower bounds for all real values (lower_kind 'certified')")
    c.add_argument("--certify-only", action="store_true",
                   help="certified lower bounds only: no grid pass, no upper-bound search")
    c.add_argument("--certify-time-limit", type=float, default=60.0, metavar="SEC",
                   help="seconds per input and level for certification (default 60)")
    c.add_argument("--certify-method", choices=("auto", "hybrid", "crown", "forward", "ibp"), default="auto",
                   help="bounds for certification: 'hybrid' (CROWN on the fully connected head), 'crown' "
                        "(tighter, costlier on convolutional bodies; better for conv + linear models) or 'auto' "
                        "(default: crown when the only dense layers follow the last non-linearity, else hybrid)")
    c.add_argument("--mode", choices=("auto", "eager", "channels_last", "compile", "compile+channels_last"),
                   default="auto", help="forward execution mode; 'eager' turns every optimisation off")
    c.add_argument("--pixels", default="all", metavar="SEL",
                   help="features that may change: all (default), sample:K[:SEED] or top:K (gradient screen); "
                        "with anything but all only the upper bound is claimed (lower_kind 'selection')")
    c.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="bfloat16 screening of the rows with float32 re-checks near the boundary and of every "
                        "example (auto: on CUDA GPUs with bfloat16 units; float32 elsewhere)")
    add_ray_options(ev)


# -- run ------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """``l0tre evaluate``: run, write outputs after every snapshot, report at the end.

    ``args`` may also come from ``l0tre demo`` (a namespace with the same attributes); every
    attribute but ``command`` and ``debug`` is recorded in the ``config`` of results.json.
    """
    seed_everything(args.seed)
    out = Path(args.out)
    refuse_to_replace(out, resume=args.resume, overwrite=getattr(args, "overwrite", False))
    model = load_classifier(args)
    data = select_inputs(model, args)
    with output_errors("--out"):
        _output_folder(args, out)
        final = _evaluate(args, model, data, out)
        if final.stopped == "interrupted":
            notice(args, "interrupted: the current bounds are written")
        report = None if args.no_report else _write_report(args, out)
        stream = sys.stderr if args.json else sys.stdout
        if not (args.json and args.quiet):
            for line in _summary_lines(final, out, report):
                print(line, file=stream)
        if args.json:
            print(json.dumps(read_results(out), indent=1))
    return EXIT_OK


def _evaluate(args: argparse.Namespace, model: Classifier, data: Dataset, out: Path) -> Result:
    """Run the evaluation, writing the output files after every snapshot; the final snapshot."""
    progress = None if args.quiet else TqdmProgress(
        file=sys.stderr, mininterval=0.2 if sys.stderr.isatty() else 10.0)
    try:
        with ray_executor(args) as executor:
            engine = _prepare(args, model, data, out / CHECKPOINT, progress, executor)
            config = _config(args, model, data, engine, args.time_budget)
            indices = [int(i) for i in data.indices]

            def on_snapshot(snap: Result) -> None:
                """Write the output files for this snapshot."""
                write_outputs(out, snap, indices, data.x, config)

            return drive(engine, on_snapshot, guard=signals_ignored)
    finally:
        if progress is not None:
            progress.close()


def _output_folder(args: argparse.Namespace, out: Path) -> None:
    """Create ``--out`` and check that it can be written; with ``--overwrite`` delete the earlier
    run's files (a notice says which)."""
    check_writable_folder(out, argument="--out")
    if getattr(args, "overwrite", False):
        removed = remove_run_files(out, argument="--out")
        if removed:
            notice(args, f"overwrite: removed the earlier run's {', '.join(removed)} from {str(out)!r}")
    elif args.resume and not (out / CHECKPOINT).exists():
        notice(args, f"resume: no checkpoint at {str(out / CHECKPOINT)!r}; starting from the beginning")


def _prepare(args: argparse.Namespace, model: Classifier, data: Dataset, ckpt: Path,
             progress: TqdmProgress | None, executor: Executor | None = None) -> Engine:
    """The engine for this run (resumed from ``ckpt`` when it exists), with the time budget set."""
    limits: dict[str, Any] = {}  # unset: the API's defaults
    if args.max_memory:
        limits["max_memory"] = args.max_memory
    if args.max_evaluations:
        limits["max_evaluations"] = args.max_evaluations
    try:
        engine = prepare(
            model, data.x, epsilon=args.epsilon, t_max=args.t_max, features=args.features,
            batch_size=args.batch_size, checkpoint=ckpt, report_every=args.report_every, labels=data.y,
            progress=progress, executor=executor, **limits,
            certify="only" if getattr(args, "certify_only", False) else bool(getattr(args, "certify", False)),
            certify_time_limit=getattr(args, "certify_time_limit", 60.0), mode=getattr(args, "mode", "auto"),
            certify_method=getattr(args, "certify_method", "auto"), pixels=getattr(args, "pixels", "all"),
            precision=getattr(args, "precision", "auto"),
        )
    except ValueError as exc:
        if args.resume and str(exc).startswith("checkpoint:"):
            raise ValueError(f"{exc}; or pass --overwrite instead of --resume to start over in --out") from exc
        raise
    if args.resume and ckpt.exists():
        notice(args, f"resume: continuing from level t={engine.result.t + 1} "
                     f"({fmt_seconds(engine.seconds_spent)} already spent)")
    if args.time_budget is not None:  # the budget counts for this invocation
        engine.set_time_budget(args.time_budget, from_now=True)
    return engine


def _config(args: argparse.Namespace, model: Classifier, data: Dataset, engine: Engine,
            time_budget: float | None) -> dict[str, Any]:
    """The ``config`` block of results.json: every option plus what was resolved."""
    from .. import __version__

    options = {k: v for k, v in vars(args).items() if k not in ("command", "debug")}
    options["time_budget"] = time_budget
    module = model.modules()
    return dict(json_safe({
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
        "pixels_used": engine.result.pixels,
        "precision_used": engine.result.precision,
        "lower_bound_claimed": engine.result.lower_bound_claimed,
        "l0tre_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }))


def _summary_lines(res: Result, out: Path, report: Path | None) -> list[str]:
    """The final summary printed at the end of a run."""
    n = int(res.lower.numel())
    conv = int(res.converged.sum())
    where = "after level" if res.level_complete else "in level"
    t_text = f"t={res.t}" if res.level_complete or res.t == 0 else f"t={res.t + 1} (levels 1..{res.t} complete)"
    acc = "" if res.accuracy is None else f", accuracy {100 * res.accuracy:.1f}%"
    lines = [
        f"stopped: {res.stopped} {where} {t_text}; {conv}/{n} inputs converged; "
        f"{res.evaluations:,} model evaluations in {fmt_seconds(res.seconds)}",
        f"global L0 radius: lower {res.global_lower:.3f}, upper {res.global_upper:.3f}, "
        f"estimate {res.estimate:.3f} ± {res.radius:.3f}{acc}",
    ]
    if not res.lower_bound_claimed:
        lines.append(f"pixels {res.pixels}: only the selected features were searched; the upper bound holds, "
                     "the lower bound is not claimed")
    cert = res.global_certified_lower
    if cert is not None:
        lines.append(f"certified lower bound (all real values): {cert:.3f}")
    lines.append(f"results: {out / RESULTS_JSON}" + (f"; report: {report}" if report is not None else ""))
    return lines


def _write_report(args: argparse.Namespace, out: Path) -> Path | None:
    """Build the report; a failure is a notice (the results are already written)."""
    from ..report import INDEX_HTML, build_report

    try:
        files = build_report(out)
    except KeyboardInterrupt:
        notice(args, "report skipped (interrupted); rebuild it with `l0tre report DIR`")
        return None
    except Exception as exc:  # noqa: BLE001 - the run's results must not be lost to a plotting error
        if getattr(args, "debug", False):
            raise
        notice(args, f"report failed ({type(exc).__name__}: {exc}); results are in {out / RESULTS_JSON}")
        return None
    return next((f for f in files if f.name == INDEX_HTML), None)
