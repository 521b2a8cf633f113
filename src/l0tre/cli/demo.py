"""``l0tre demo``: the embedded paper-mnist model on the bundled MNIST test images.

It runs ``l0tre evaluate`` with fixed options (t=1, then t=2 under a time budget) and ignores
``$L0TRE_DATA``, so that it needs nothing but the package. It replaces the output of an earlier
demo in ``--out``, never another run (that needs ``--overwrite``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..outdir import read_results, run_files
from ..paths import ENV_VAR
from . import evaluate
from .common import fmt_seconds, refuse_to_replace, without_env
from .parsing import Subparsers, argtype, common_options, parse_duration

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Subparsers) -> None:
    """Register ``demo`` and its options."""
    demo = subparsers.add_parser(
        "demo", parents=[common_options()], help="evaluate the bundled MNIST model and write a report",
        description="Evaluates 20 of the 100 bundled MNIST test images on the embedded "
                    "paper-mnist model at t=1, then t=2 under a time budget.")
    demo.add_argument("--out", default="l0tre-demo", metavar="DIR",
                      help="output folder (default ./l0tre-demo; an earlier demo there is replaced)")
    demo.add_argument("--overwrite", action="store_true", help="replace a run in DIR that is not a demo's")
    demo.add_argument("--time-budget", type=argtype(parse_duration), default=80.0, metavar="DURATION",
                      help="evaluation time budget (default 80s)")
    demo.add_argument("--limit", type=int, default=20, metavar="N", help="number of images (default 20)")
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")


def evaluate_args(args: argparse.Namespace) -> argparse.Namespace:
    """The ``l0tre evaluate`` options of the demo (recorded as its results.json ``config``)."""
    return argparse.Namespace(
        command="demo", model="paper-mnist", data="mnist:test", data_root=None, limit=args.limit, indices=None,
        start=0, only_correct=False, arch=None, trust_pickle=False, device=args.device, epsilon=0.5, t_max=2,
        features="pixel", batch_size=256, max_memory=None, max_evaluations=None, time_budget=args.time_budget,
        out=args.out, resume=False, overwrite=True, report_every=5.0, seed=0, quiet=args.quiet, json=False,
        no_report=False, debug=args.debug,
    )


def _earlier_demo(out: Path) -> bool:
    """Whether ``out`` holds the results of an earlier ``l0tre demo`` (replaced without asking)."""
    try:
        config = read_results(out).get("config")
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("command") == "demo"


def run(args: argparse.Namespace) -> int:
    """``l0tre demo``: evaluate, then print where the report is."""
    out = Path(args.out)
    if run_files(out) and not _earlier_demo(out):
        refuse_to_replace(out, resume=None, overwrite=args.overwrite)
    if not args.quiet:
        print(f"l0tre demo: paper-mnist on {args.limit} bundled MNIST test images, t=1 then t=2, "
              f"time budget {fmt_seconds(args.time_budget)} → {args.out}/", file=sys.stderr)
    with without_env(ENV_VAR):  # only the embedded model and images
        code = evaluate.run(evaluate_args(args))
    print(f"demo output: {Path(args.out).resolve()} (open index.html)")
    return code
