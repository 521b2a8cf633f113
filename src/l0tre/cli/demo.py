"""``l0tre demo``: the paper's case study 1 on its own sDNN, then the paper-mnist attack gallery.

Both parts use only what ships in the package (``$L0TRE_DATA`` is ignored): the paper's sDNN
(``paper-sdnn``, converted from its MATLAB file) on the bundled MNIST test images resized to
14×14 (``mnist14:test``), and the paper's MNIST CNN (``paper-mnist``) on the bundled 28×28 ones.

1. ``l0tre study global`` at ε = 0.5 (each changed pixel becomes 0, 0.5 or 1), t ≤ 2, with
   certified lower bounds, under a time budget: the anytime convergence of the paper's Figs. 1–2
   (most inputs converge: their grid lower bound meets the upper bound).
2. ``l0tre attack`` on a few images into ``OUT/attack`` (``examples.png``, the gallery).

It replaces the output of an earlier demo in ``--out``, never another run (that needs ``--overwrite``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..atomic import atomic_write_text
from ..outdir import read_results, run_files
from ..paths import ENV_VAR
from .common import fmt_seconds, output_errors, refuse_to_replace, without_env
from .parsing import EXIT_OK, Subparsers, argtype, common_options, parse_duration

__all__ = ["DEMO_EPSILON", "DEMO_T_MAX", "add_parser", "run"]

MARKER = "demo.json"
DEMO_EPSILON = 0.5
DEMO_T_MAX = 2


def add_parser(subparsers: Subparsers) -> None:
    """Register ``demo`` and its options."""
    demo = subparsers.add_parser(
        "demo", parents=[common_options()], help="the paper's sDNN study and an attack gallery, from bundled data",
        description=f"Case study 1 of the paper on its own sDNN (14x14 MNIST, bundled): global L0 robustness "
                    f"at epsilon={DEMO_EPSILON}, t <= {DEMO_T_MAX}, with certified lower bounds and the Figs. 1-2 "
                    "convergence plots; then an attack gallery of the paper's MNIST CNN.")
    demo.add_argument("--out", default="l0tre-demo", metavar="DIR",
                      help="output folder (default ./l0tre-demo; an earlier demo there is replaced)")
    demo.add_argument("--overwrite", action="store_true", help="replace a run in DIR that is not a demo's")
    demo.add_argument("--time-budget", type=argtype(parse_duration), default=75.0, metavar="DURATION",
                      help="time budget of the study (default 75s)")
    demo.add_argument("--limit", type=int, default=20, metavar="N", help="number of sDNN images (default 20)")
    demo.add_argument("--attack-limit", type=int, default=8, metavar="N",
                      help="number of images in the attack gallery (default 8; 0: no attack)")
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")


def _earlier_demo(out: Path) -> bool:
    """Whether ``out`` holds the output of an earlier ``l0tre demo`` (replaced without asking)."""
    try:
        marker = json.loads((out / MARKER).read_text())
        if isinstance(marker, dict) and marker.get("command") == "demo":
            return True
    except (OSError, ValueError):
        pass
    try:
        config = read_results(out).get("config")
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("command") == "demo"


def _sub_args(argv: list[str]) -> argparse.Namespace:
    """The parsed options of another ``l0tre`` command (the demo's fixed settings)."""
    from . import build_parser

    return build_parser().parse_args(argv)


def _study_argv(args: argparse.Namespace) -> list[str]:
    """The ``l0tre study global`` command line of the demo's first part."""
    return ["study", "global", "--model", "paper-sdnn", "--data", "mnist14:test", "--limit", str(args.limit),
            "--epsilon", str(DEMO_EPSILON), "--t-max", str(DEMO_T_MAX), "--certify", "--certify-time-limit", "10",
            "--time-budget", str(args.time_budget), "--device", args.device, "--out", str(args.out), "--overwrite",
            *(["--quiet"] if args.quiet else []), *(["--debug"] if args.debug else [])]


def _attack_argv(args: argparse.Namespace) -> list[str]:
    """The ``l0tre attack`` command line of the demo's gallery (into ``OUT/attack``)."""
    return ["attack", "--model", "paper-mnist", "--data", "mnist:test", "--limit", str(args.attack_limit),
            "--time-budget", "20", "--effort", "fast", "--out", str(Path(args.out) / "attack"), "--overwrite",
            *(["--quiet"] if args.quiet else [])]


def run(args: argparse.Namespace) -> int:
    """``l0tre demo``: study, attack, then one sentence on what the output shows."""
    out = Path(args.out)
    if (run_files(out) or (out / "results.json").exists()) and not _earlier_demo(out):
        refuse_to_replace(out, resume=None, overwrite=args.overwrite)
    if not args.quiet:
        print(f"l0tre demo: the paper's sDNN on {args.limit} bundled 14x14 MNIST test images (epsilon "
              f"{DEMO_EPSILON}, t <= {DEMO_T_MAX}, certified lower bounds, budget {fmt_seconds(args.time_budget)}), "
              f"then the paper-mnist attack gallery -> {args.out}/", file=sys.stderr)
    study = _sub_args(_study_argv(args))
    with without_env(ENV_VAR):  # only the embedded models and images
        from . import attack
        from . import study as study_cmd

        code = study_cmd.run(study)
        with output_errors("--out"):
            atomic_write_text(out / MARKER, json.dumps({"command": "demo", "limit": args.limit,
                                                        "epsilon": DEMO_EPSILON, "t_max": DEMO_T_MAX}))
        if code == EXIT_OK and args.attack_limit > 0:
            code = attack.run(_sub_args(_attack_argv(args)))
    where = out.resolve()
    print(f"demo output: {where} (open index.html; the attack gallery is attack/examples.png)")
    print("You are looking at the anytime L0 robustness of the paper's sDNN: per image, lower and upper bounds on "
          "how many pixels can change (to 0, 0.5 or 1) without changing its label, tightening level by level until "
          "they meet (converged), with the lower bounds proved for all real pixel values beside them (index.html, "
          "Figs. 1-2); then adversarial examples of the paper's MNIST CNN that change only a few pixels "
          "(attack/examples.png).")
    return code
