"""``l0tre attack``: adversarial examples with as few changed pixels as possible.

:func:`add_parser` registers the command, :func:`run` executes it; the output folder is written
by :func:`l0tre.outdir.write_attack_outputs` (results.json, adversarial.npz, examples.png). A
folder that holds a run is refused without ``--overwrite`` (an attack cannot be resumed), and one
that cannot be written is reported before the attack starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..atomic import OutputError
from ..outdir import check_writable_folder, remove_run_files, write_attack_outputs
from .common import load_inputs, notice, output_errors, refuse_to_replace
from .parsing import EXIT_ERROR, EXIT_OK, Subparsers, parse_indices

__all__ = ["add_parser", "parse_indices", "run"]


def add_parser(subparsers: Subparsers) -> None:
    """Register the ``attack`` subcommand on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "attack",
        help="find adversarial examples with as few changed pixels as possible",
        description="Minimal-L0 adversarial attack (L0-TRE upper-bound path with refinement). "
        "Every example is re-verified on the model; L0 counts positions (h, w).",
    )
    p.add_argument("--model", required=True, help="built-in model name or model file")
    p.add_argument("--data", required=True, help="mnist:test, cifar10:test, an image folder, .npy/.npz")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier run in --out (else such a folder is refused)")
    p.add_argument("--epsilon", type=float, default=0.5, help="value grid step, must divide 1 (default 0.5)")
    p.add_argument("--max-pixels", type=int, default=None, help="L0 budget: larger examples count as failures")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds per attacked input (time-matched mode); the best examples found in it are returned")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default: CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per model call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--effort", choices=("fast", "default", "thorough"), default="default",
                   help="search breadth: fast (~3x quicker, slightly larger L0), default, thorough")
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="search evaluations: bfloat16 with float32 re-checks near the boundary (auto: where "
                        "the CPU has AMX or the GPU bf16 units); examples are always verified in float32")
    p.add_argument("--limit", type=int, default=None, help="attack at most this many inputs")
    p.add_argument("--indices", default=None, help="positions in the data set, e.g. 0,5,10-19")
    p.add_argument("--data-root", default=None, help="shared data directory (else $L0TRE_DATA)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--json", action="store_true", help="print results.json to stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``l0tre attack``; returns the exit status (0 ok, 2 bad arguments, inputs or --out)."""
    from ..apps.attack.core import attack
    from ..models import load_model

    out = Path(args.out)
    try:
        refuse_to_replace(out, resume=None, overwrite=args.overwrite)
        indices = parse_indices(args.indices) if args.indices else None
        clf = load_model(args.model, device=args.device, data_root=args.data_root)
        data = load_inputs(args, clf, limit=args.limit, indices=indices)
        check_writable_folder(out, argument="--out")
        if args.overwrite and remove_run_files(out, argument="--out"):
            notice(args, f"overwrite: replacing the earlier run in {str(out)!r}")
        res = attack(clf, data.x, labels=data.y, epsilon=args.epsilon, max_pixels=args.max_pixels,
                     time_budget=args.time_budget, seed=args.seed, batch_size=args.batch_size,
                     effort=args.effort, precision=args.precision, show_progress=not args.quiet)
        config = {"model": str(args.model), "data": str(args.data), "command": "attack"}
        with output_errors("--out"):
            payload = write_attack_outputs(out, res, data.x, data.indices, config)
    except (ValueError, TypeError, FileNotFoundError, OutputError) as exc:
        print(f"l0tre attack: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(payload, indent=1))
    elif not args.quiet:
        g = payload["global"]
        print(f"attacked {g['attacked']} inputs ({g['misclassified']} misclassified skipped): "
              f"success {g['successes']}/{g['attacked']}, mean L0 {g['mean_l0']}, median {g['median_l0']}, "
              f"{g['seconds_per_image']:.3f} s/image → {args.out}")
    return EXIT_OK
