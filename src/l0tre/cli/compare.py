"""``l0tre compare``: which of several models is more robust (the paper's case study 4).

Every model is evaluated on the same inputs, level by level across the models. ``--out DIR``
receives ``results.json`` (table per level and model, rankings with paired confidence intervals,
per-input bounds), ``fig8_bounds.png``, ``fig9_spread.png``, ``pairwise.png``, ``accuracy.png``
and ``index.html``; each model's run (checkpoint and level log) is kept in ``DIR/runs``, so that
``--resume`` redoes no level a model completed and continues the one in progress.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from ..apps.compare import compare, write_compare
from ..apps.compare.core import check_same_shape
from ..atomic import OutputError
from ..classifier import Classifier
from ..data import EmbeddedDataWarning, load_data
from ..models import load_model
from ..outdir import RESULTS_JSON, check_writable_folder, json_safe
from .common import check_forward, fmt_seconds, image_shape, load_inputs, notice, output_errors, ray_executor
from .parsing import (
    EXIT_OK,
    Subparsers,
    UsageError,
    add_engine_options,
    add_ray_options,
    argtype,
    common_options,
    parse_duration,
    parse_indices,
)

__all__ = ["RUNS", "add_parser", "run"]

RUNS = "runs"  #: the sub-folder of the models' checkpoints and level logs
_PREDICT_CHUNK = 512


def add_parser(subparsers: Subparsers) -> None:
    """Register ``compare`` and its options."""
    p = subparsers.add_parser(
        "compare", parents=[common_options()], help="compare the L0 robustness of several models (case study 4)",
        description="Evaluate several models on the same inputs, level by level (all models at t = 1, then t = 2, "
                    "...), and rank them by global robustness with paired confidence intervals. Writes "
                    "results.json, fig8_bounds.png, fig9_spread.png, pairwise.png, accuracy.png and index.html to "
                    "--out; --resume continues an interrupted comparison.")
    g = p.add_argument_group("models and data")
    g.add_argument("--models", nargs="+", required=True, metavar="SPEC",
                   help="two or more models: built-in names or model files (all of one input shape)")
    g.add_argument("--data", required=True, metavar="SPEC", help="mnist:test, an image folder, a .npy/.npz file")
    g.add_argument("--data-root", metavar="DIR", help="where the shared data lives (default: $L0TRE_DATA)")
    g.add_argument("--limit", type=int, metavar="N", help="compare on the first N inputs")
    g.add_argument("--deep-limit", type=int, metavar="M", help="levels t >= 2 on the first M of them only")
    g.add_argument("--indices", type=argtype(parse_indices), metavar="LIST", help="positions in the data set")
    g.add_argument("--start", type=int, default=0, metavar="K", help="skip the first K images of the data set")
    g.add_argument("--arch", metavar="NAME", help="architecture of bare state_dict files")
    g.add_argument("--trust-pickle", action="store_true", help="allow loading full pickled models")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the models run")
    add_engine_options(p)
    r = p.add_argument_group("run")
    r.add_argument("--out", required=True, metavar="DIR", help="output folder")
    again = r.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the comparison in DIR")
    again.add_argument("--overwrite", action="store_true", help="start over: delete the earlier comparison in DIR")
    r.add_argument("--time-budget", type=argtype(parse_duration), metavar="DURATION",
                   help="stop after this long (over all models) with the levels every model completed")
    r.add_argument("--certify", action="store_true", help="also prove lower bounds for all real values")
    r.add_argument("--certify-time-limit", type=float, default=60.0, metavar="SEC",
                   help="seconds per input and level for certification (default 60)")
    r.add_argument("--test-accuracy", action="store_true",
                   help="also report each model's accuracy on the whole --data set (not only the compared inputs)")
    r.add_argument("--confidence", type=float, default=0.95, metavar="LEVEL",
                   help="level of the paired confidence intervals (default 0.95)")
    r.add_argument("--mode", choices=("auto", "eager", "channels_last", "compile", "compile+channels_last"),
                   default="auto", help="forward execution mode")
    r.add_argument("--quiet", action="store_true", help="no progress bars and no notices")
    add_ray_options(p)


def _names(specs: list[str]) -> list[str]:
    """A short, unique name per model spec (a file's stem, else the spec)."""
    base = [Path(s).stem if Path(s).suffix else s for s in specs]
    return [b if base.count(b) == 1 else f"{b}-{i}" for i, b in enumerate(base)]


def _prepare_folder(args: argparse.Namespace, out: Path) -> None:
    """Refuse a folder that holds a comparison (unless --resume / --overwrite); clear it with --overwrite."""
    runs = out / RUNS
    held = [name for name in (RESULTS_JSON, RUNS) if (out / name).exists()]
    if held and not (args.resume or args.overwrite):
        raise UsageError(f"--out: {str(out)!r} already holds a comparison ({', '.join(held)}); pass --resume to "
                         "continue it, or --overwrite to start over (or choose another --out)")
    check_writable_folder(out, argument="--out")
    if args.overwrite and held:
        for path in [out / RESULTS_JSON, *sorted(runs.glob("*/*.pt"))]:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise OutputError.from_os_error(exc, path, action="remove", argument="--out") from exc
        notice(args, f"overwrite: removed the earlier comparison's files from {str(out)!r}")


def _test_accuracy(args: argparse.Namespace, models: list[Classifier]) -> list[float | None]:
    """Each model's accuracy on the whole ``--data`` set (``None`` without labels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmbeddedDataWarning)  # the selection's notice said it
        full = load_data(args.data, data_root=args.data_root, input_shape=image_shape(models[0]))
    if full.y is None:
        return [None] * len(models)
    out: list[float | None] = []
    for m in models:
        right = 0
        for i in range(0, len(full), _PREDICT_CHUNK):
            pred = m.predict(full.x[i:i + _PREDICT_CHUNK], batch_size=_PREDICT_CHUNK).cpu()
            right += int((pred == full.y[i:i + _PREDICT_CHUNK]).sum())
        out.append(right / len(full))
    return out


def run(args: argparse.Namespace) -> int:
    """``l0tre compare``: load the models, check their shapes, run, write the folder."""
    if len(args.models) < 2:
        raise UsageError(f"--models: expected at least 2 models to compare, got {len(args.models)}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit: expected a positive integer, got {args.limit}")
    if args.deep_limit is not None and args.deep_limit < 1:
        raise ValueError(f"--deep-limit: expected a positive integer, got {args.deep_limit}")
    out = Path(args.out)
    _prepare_folder(args, out)
    names = _names(list(args.models))
    models = [load_model(s, arch=args.arch, device=args.device, trust_pickle=args.trust_pickle,
                         data_root=args.data_root) for s in args.models]
    first_shape = next((m.input_shape for m in models if m.input_shape is not None), None)
    if first_shape is not None:
        check_same_shape(list(zip(names, models, strict=True)), tuple(first_shape))
    data = load_inputs(args, models[0], limit=args.limit, indices=args.indices, start=args.start)
    if len(data) == 0:
        raise ValueError(f"data: expected at least one input, got none from {args.data!r} with this selection")
    for m in models:
        check_forward(m, data.x)
    config: dict[str, Any] = dict(json_safe({
        **{k: v for k, v in vars(args).items() if k not in ("command", "debug")}, "command": "compare",
        "names": names, "data_name": data.name, "inputs": len(data), "input_shape": list(data.x.shape[1:]),
        "indices_used": [int(i) for i in data.indices]}))

    def stage(name: str, t: int, inputs: int) -> None:
        """A notice before each model's level."""
        notice(args, f"compare: {name} at t={t} on {inputs} inputs")

    with ray_executor(args) as executor, output_errors("--out"):
        comp = compare(dict(zip(names, models, strict=True)), data.x, labels=data.y, epsilon=args.epsilon,
                       t_max=args.t_max, deep_limit=args.deep_limit, features=args.features, certify=args.certify,
                       certify_time_limit=args.certify_time_limit, batch_size=args.batch_size,
                       max_memory=args.max_memory, time_budget=args.time_budget, checkpoint_dir=out / RUNS,
                       **({"max_evaluations": args.max_evaluations} if args.max_evaluations else {}),
                       mode=args.mode, confidence=args.confidence, show_progress=not args.quiet, on_stage=stage,
                       executor=executor)
        test_acc = _test_accuracy(args, models) if args.test_accuracy and data.y is not None else None
        files = write_compare(out, comp, config, test_accuracy=test_acc)
    _print_summary(comp, files[-1], sum(comp.seconds.values()))
    return EXIT_OK


def _print_summary(comp: Any, page: Path, seconds: float) -> None:
    """The ranking at every level all models completed."""
    print(f"compare: {len(comp.names)} models, stopped: {comp.stopped}; levels completed by all: "
          f"{comp.complete_levels() or 'none'} ({fmt_seconds(seconds)} of model runs)")
    for t in comp.complete_levels():
        rank = comp.ranking(t)
        ests = {r["model"]: r["estimate"] for r in comp.table() if r["t"] == t}
        print(f"t={t} ({rank.inputs} inputs): " + " > ".join(f"{n} ({ests[n]:.2f})" for n in rank.order))
        for line in rank.statements():
            print(f"  {line}")
    print(f"report: {page}")

