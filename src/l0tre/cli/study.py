"""``l0tre study global``: the paper's case study 1 (anytime global robustness, Figs. 1–2).

``--out DIR`` receives ``results.json`` (per level and per input), ``fig1a_input.png``,
``fig1b_global.png``, ``fig1c_time.png``, ``fig2_inputs.png`` and ``index.html``; the run itself
is an ``l0tre evaluate`` folder in ``DIR/evaluation`` (its checkpoint, per-input files and
report), written after every snapshot. A folder that holds a study is refused unless
``--resume`` (continue it) or ``--overwrite`` (start over).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..apps.study import levels_path, study_global, write_study
from ..atomic import OutputError
from ..outdir import CHECKPOINT, RESULTS_JSON, check_writable_folder, json_safe, remove_run_files, write_outputs
from ..result import Result
from .common import (
    fmt_seconds,
    load_classifier,
    notice,
    output_errors,
    ray_executor,
    refuse_to_replace,
    select_inputs,
)
from .parsing import (
    EXIT_OK,
    Subparsers,
    UsageError,
    add_engine_options,
    add_ray_options,
    add_source_options,
    argtype,
    common_options,
    parse_duration,
)

__all__ = ["EVALUATION", "add_parser", "run"]

EVALUATION = "evaluation"  #: the sub-folder holding the run (an ``l0tre evaluate`` folder)


def add_parser(subparsers: Subparsers) -> None:
    """Register ``study`` with its one study, ``global``."""
    st = subparsers.add_parser("study", parents=[common_options()], help="the paper's case studies (global)",
                               description="Case studies of the L0-TRE paper.")
    kinds = st.add_subparsers(dest="study", metavar="STUDY", required=True, parser_class=type(st))
    g = kinds.add_parser(
        "global", parents=[common_options()], help="anytime global robustness (case study 1, Figs. 1-2)",
        description="Anytime global robustness of a model on a data set (paper case study 1): the bounds of "
                    "every input after each level t, the global lower/upper/estimate per level, the time per "
                    "level and the per-input bounds ordered by the t = 1 upper bound. Writes results.json, "
                    "fig1a_input.png, fig1b_global.png, fig1c_time.png, fig2_inputs.png and index.html to "
                    "--out; the run is in DIR/evaluation (resumable with --resume).")
    add_source_options(g, data_required=True)
    add_engine_options(g)
    r = g.add_argument_group("run")
    r.add_argument("--out", required=True, metavar="DIR", help="output folder")
    again = r.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the study in DIR")
    again.add_argument("--overwrite", action="store_true", help="start over: delete the earlier study in DIR")
    r.add_argument("--time-budget", type=argtype(parse_duration), metavar="DURATION",
                   help="stop after this long (90, 10m, 1h; this invocation's time) with the current bounds")
    r.add_argument("--certify", action="store_true",
                   help="also prove lower bounds for all real values (drawn next to the grid bounds)")
    r.add_argument("--certify-time-limit", type=float, default=60.0, metavar="SEC",
                   help="seconds per input and level for certification (default 60)")
    r.add_argument("--focus", type=int, metavar="ROW",
                   help="the input (row of the selection) of Fig. 1a (default: largest t = 1 upper bound)")
    r.add_argument("--mode", choices=("auto", "eager", "channels_last", "compile", "compile+channels_last"),
                   default="auto", help="forward execution mode")
    r.add_argument("--report-every", type=float, default=5.0, metavar="SEC", help="seconds between snapshots")
    r.add_argument("--quiet", action="store_true", help="no progress bar and no notices")
    add_ray_options(g)


def _prepare_folder(args: argparse.Namespace, out: Path) -> None:
    """Refuse a folder that holds a study (unless --resume / --overwrite); clear it with --overwrite."""
    run = out / EVALUATION
    refuse_to_replace(run, resume=args.resume, overwrite=args.overwrite)
    if not (args.resume or args.overwrite) and (out / RESULTS_JSON).exists():
        raise UsageError(f"--out: {str(out)!r} already holds a study ({RESULTS_JSON}); pass --resume to continue "
                         "it, or --overwrite to start over (or choose another --out)")
    check_writable_folder(run, argument="--out")
    if args.overwrite:
        removed = remove_run_files(run, argument="--out") + remove_run_files(out, argument="--out")
        log = levels_path(run / CHECKPOINT)
        if log.exists():
            try:
                log.unlink()
            except OSError as exc:
                raise OutputError.from_os_error(exc, log, action="remove", argument="--out") from exc
        if removed:
            notice(args, f"overwrite: removed the earlier study's files from {str(out)!r}")
    elif args.resume and not (run / CHECKPOINT).exists():
        notice(args, f"resume: no checkpoint at {str(run / CHECKPOINT)!r}; starting from the beginning")


def run(args: argparse.Namespace) -> int:
    """``l0tre study global``: run, write the evaluation folder after every snapshot, then the study."""
    out = Path(args.out)
    _prepare_folder(args, out)
    model = load_classifier(args)
    data = select_inputs(model, args)
    if args.focus is not None and not 0 <= args.focus < len(data):
        raise ValueError(f"--focus: expected a row index in [0, {len(data)}), got {args.focus}")
    indices = [int(i) for i in data.indices]
    options = {k: v for k, v in vars(args).items() if k not in ("command", "debug")}
    config: dict[str, Any] = dict(json_safe({**options, "command": "study global", "model_name": model.name,
                                             "data_name": data.name, "inputs": len(data),
                                             "input_shape": list(data.x.shape[1:])}))
    run_dir = out / EVALUATION

    def on_snapshot(snap: Result) -> None:
        """The evaluation folder after every snapshot."""
        write_outputs(run_dir, snap, indices, data.x, config)

    with ray_executor(args) as executor, output_errors("--out"):
        study = study_global(
            model, data.x, labels=data.y, epsilon=args.epsilon, t_max=args.t_max, features=args.features,
            certify=args.certify, certify_time_limit=args.certify_time_limit, batch_size=args.batch_size,
            max_memory=args.max_memory, time_budget=args.time_budget, time_budget_from_now=True,
            checkpoint=run_dir / CHECKPOINT,
            report_every=args.report_every, mode=args.mode, focus=args.focus, show_progress=not args.quiet,
            on_snapshot=on_snapshot, executor=executor,
            **({"max_evaluations": args.max_evaluations} if args.max_evaluations else {}))
        files = write_study(out, study, indices, config)
        _evaluation_report(args, run_dir)
    res = study.result
    print(f"stopped: {res.stopped} after level t={res.t}; {int(res.converged.sum())}/{res.lower.numel()} inputs "
          f"converged in {fmt_seconds(res.seconds)}")
    for rec in study.levels:
        cert = rec.summary().get("certified_lower")
        cert = "" if cert is None else f", certified lower {cert:.3f}"
        print(f"  t={rec.t}: lower {rec.global_lower:.3f}, upper {rec.global_upper:.3f}, estimate "
              f"{rec.estimate:.3f} ± {rec.radius:.3f}{cert} ({rec.converged} converged, {fmt_seconds(rec.seconds)})")
    print(f"study: {files[-1] if len(files) > 1 else files[0]}")
    return EXIT_OK


def _evaluation_report(args: argparse.Namespace, run_dir: Path) -> None:
    """The ``l0tre evaluate`` report of the run (adversarial examples); a failure is a notice."""
    from ..report import build_report

    try:
        build_report(run_dir)
    except (OSError, ValueError, ImportError) as exc:
        if getattr(args, "debug", False):
            raise
        notice(args, f"report of {str(run_dir)!r} failed ({type(exc).__name__}: {exc})")
