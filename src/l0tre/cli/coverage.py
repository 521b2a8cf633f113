"""``l0tre coverage``: neuron coverage of a test set, and minimal-L0 tests for the neurons it
misses (paper Case Study 3).

:func:`add_parser` registers the command, :func:`run` executes it; the folder is written by
:func:`l0tre.apps.coverage.outputs.write_coverage_outputs` (results.json, tests.npz, figures,
index.html). ``--measure-only`` (``--t-max 0``) reports the seeds' coverage alone. A time budget
or Ctrl-C / SIGTERM stops the search; what was found (re-checked) is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..atomic import OutputError
from ..outdir import check_writable_folder, remove_run_files
from .common import load_classifier, notice, output_errors, refuse_to_replace, select_inputs, signals_ignored
from .parsing import EXIT_ERROR, EXIT_OK, Subparsers, add_source_options, argtype, common_options, parse_duration

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Subparsers) -> None:
    """Register the ``coverage`` subcommand."""
    p = subparsers.add_parser(
        "coverage", parents=[common_options()],
        help="neuron coverage of a test set and minimal-L0 tests for the neurons it misses",
        description="Neuron coverage (outputs of every hidden ReLU) of the --data inputs; for every neuron none "
                    "of them activates, the test closest in L0 to one of them that does (pixels set to values of "
                    "the epsilon-grid, re-checked), and proofs for neurons no input can activate. Writes "
                    "results.json, tests.npz, PNG figures and index.html to --out.",
    )
    add_source_options(p, data_required=True)
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    g = p.add_argument_group("coverage")
    g.add_argument("--neurons", default="channel", metavar="KIND",
                   help="channel (a conv channel's mean activation; a dense unit) or element (every activation "
                        "element); default channel")
    g.add_argument("--threshold", type=float, default=0.0, metavar="T",
                   help="a neuron is covered when its value is > T (>= 0; default 0)")
    g.add_argument("--epsilon", type=float, default=0.5, metavar="E", help="grid step of changed pixels (default 0.5)")
    g.add_argument("--t-max", type=int, default=3, metavar="T", help="most pixels changed per test (default 3)")
    g.add_argument("--measure-only", action="store_true", help="only measure the inputs' coverage (--t-max 0)")
    g.add_argument("--time-budget", type=argtype(parse_duration), metavar="DURATION",
                   help="stop the search after this long (e.g. 90s, 10m); found tests are written")
    g.add_argument("--layers", metavar="NAMES", help="comma-separated hidden activations to count (default all)")
    g.add_argument("--batch-size", type=int, default=256, metavar="N", help="candidate tests per forward pass")
    g.add_argument("--max-evaluations", type=int, default=50_000, metavar="N",
                   help="candidate tests per level (a level that fits is searched exhaustively)")
    g.add_argument("--no-reach", action="store_true",
                   help="no reachability phase (gradient ascent, then a sparse test) after the grid levels")
    g.add_argument("--no-proof", action="store_true", help="do not bound neurons over the input domain")
    g.add_argument("--no-figures", action="store_true", help="write results.json and tests.npz only")
    g.add_argument("--certify", action="store_true",
                   help="prove which neurons no change of <= --certify-t pixels of any seed can fire")
    g.add_argument("--certify-t", type=int, default=1, metavar="T", help="level --certify proves (default 1)")
    g.add_argument("--certify-time", type=argtype(parse_duration), metavar="DURATION",
                   help="time for --certify (default: what --time-budget leaves, else no limit)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--json", action="store_true", help="print results.json to stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``l0tre coverage``; returns the exit status (0 ok, 2 bad arguments, inputs or --out)."""
    from ..apps.coverage.core import check_threshold, coverage
    from ..apps.coverage.neurons import NeuronKind
    from ..apps.coverage.outputs import write_coverage_outputs
    from ..apps.coverage.result import CoverageResult

    out = Path(args.out)
    try:
        refuse_to_replace(out, resume=None, overwrite=args.overwrite)
        NeuronKind.parse(args.neurons)  # option errors before the model and data are loaded
        check_threshold(args.threshold)
        clf = load_classifier(args)
        data = select_inputs(clf, args)
        check_writable_folder(out, argument="--out")
        if args.overwrite and remove_run_files(out, argument="--out"):
            notice(args, f"overwrite: replacing the earlier run in {str(out)!r}")
        layers = [s.strip() for s in args.layers.split(",") if s.strip()] if args.layers else None
        t_max = 0 if args.measure_only else args.t_max
        config = {"command": "coverage", "model": str(args.model), "data": str(args.data),
                  "indices": [int(i) for i in data.indices.tolist()], "neurons": args.neurons,
                  "threshold": args.threshold, "epsilon": args.epsilon, "t_max": t_max,
                  "time_budget": args.time_budget, "layers": layers, "max_evaluations": args.max_evaluations,
                  "prove": not args.no_proof, "reach": not args.no_reach, "bounds": list(clf.bounds),
                  "device": str(clf.device), "certify": args.certify,
                  "certify_t": args.certify_t if args.certify else None,
                  "certify_time": args.certify_time if args.certify else None}

        def snapshot(res_so_far: CoverageResult) -> None:
            """Anytime: the folder always holds the latest snapshot (written atomically)."""
            with signals_ignored(), output_errors("--out"):
                write_coverage_outputs(out, res_so_far, data.x, clf.bounds, config, figures=False)

        res = coverage(clf, data.x, neurons=args.neurons, threshold=args.threshold, epsilon=args.epsilon,
                       t_max=t_max, time_budget=args.time_budget, layers=layers, batch_size=args.batch_size,
                       max_evaluations=args.max_evaluations, prove=not args.no_proof, reach=not args.no_reach,
                       show_progress=not args.quiet, on_snapshot=snapshot, certify=args.certify,
                       certify_t=args.certify_t, certify_time=args.certify_time)
        config.update(neurons=res.neurons, threshold=res.threshold)
        with signals_ignored(), output_errors("--out"):
            payload = write_coverage_outputs(out, res, data.x, clf.bounds, config, figures=not args.no_figures)
    except (ValueError, TypeError, FileNotFoundError, OutputError) as exc:
        print(f"l0tre coverage: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(payload, indent=1))
    elif not args.quiet:
        cov, tests = payload["coverage"], payload["tests"]
        print(f"{cov['total']} {cov['neurons']} neurons: seeds {100 * cov['before']:.2f} % -> "
              f"{100 * cov['after']:.2f} %, {cov['unreachable']} proven unreachable; {tests['count']} tests "
              f"(mean L0 {tests['mean_l0']}, "
              f"{tests['adversarial']} adversarial); {payload['stopped']} after {payload['seconds']:.1f} s -> {out}")
        if "not_coverable" in cov:
            nc = cov["not_coverable"]
            print(f"{nc['count']} of {nc['examined']} neurons not covered within L0 <= {nc['t']} proven not "
                  f"coverable within L0 <= {nc['t']} of any seed")
    return EXIT_OK
