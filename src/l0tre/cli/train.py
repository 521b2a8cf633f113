"""``l0tre train ARCH --out PATH``: train one of the paper's architectures on MNIST.

The architectures are those of :data:`l0tre.models.zoo.ZOO` (``sdnn``, ``dnn-0`` … ``dnn-7``,
``case2-mnist``; ``case2-cifar`` is refused: no CIFAR-10 training set is on disk). The file written
holds the state dict, the architecture name and the test accuracy; ``l0tre evaluate --model PATH``
and ``load_model(PATH)`` read it without ``--arch``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import output_errors
from .parsing import EXIT_OK, Subparsers, UsageError, common_options

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Subparsers) -> None:
    """Register ``train`` and its options."""
    from ..models.zoo import ZOO

    p = subparsers.add_parser(
        "train", parents=[common_options()], help="train one of the paper's architectures on MNIST",
        description="Trains an architecture of the L0-TRE paper (Tables 2-11) on the 60 000 MNIST training "
                    "images (sdnn: resized to 14x14) with SGD + momentum, batch 128, deterministic under "
                    "--seed on CPU, and saves state_dict + architecture + test accuracy to --out.")
    p.add_argument("arch", choices=list(ZOO), metavar="ARCH", help=f"one of {', '.join(ZOO)}")
    p.add_argument("--out", required=True, metavar="PATH", help="the model file to write (.pt)")
    p.add_argument("--epochs", type=int, default=None, metavar="E",
                   help="passes over the training set (default: per architecture, minutes on 2 CPU cores)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of weights, dropout and batch order")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="train on the first N images only")
    p.add_argument("--test-limit", type=int, default=None, metavar="N",
                   help="measure the accuracy on the first N test images only")
    p.add_argument("--data-root", default=None, metavar="DIR", help="shared data directory (else $L0TRE_DATA)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the training summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train, save, print the test accuracy next to the paper's."""
    from ..models.training import TrainConfig, save_trained, train

    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out: expected a file path, got the directory {str(out)!r}")
    if out.exists() and not args.overwrite:
        raise UsageError(f"--out: {str(out)!r} already exists; pass --overwrite to replace it, or choose another --out")
    config = TrainConfig(args.arch, epochs=args.epochs, seed=args.seed, limit=args.limit,
                         test_limit=args.test_limit, data_root=args.data_root, show_progress=not args.quiet)
    if not out.parent.is_dir():
        raise UsageError(f"--out: expected a path in an existing folder, got {str(out)!r}")
    result = train(config)
    with output_errors("--out"):
        save_trained(result, out)
    if args.json:
        print(json.dumps({**result.to_dict(), "out": str(out)}, indent=2))
        return EXIT_OK
    paper = config.spec.paper_accuracy
    versus = f" (paper: {paper:.2f}% after 20-50 epochs)" if paper is not None else ""
    print(f"{args.arch}: test accuracy {100 * result.test_accuracy:.2f}% on {result.test_images} images{versus}; "
          f"{result.epochs} epochs on {result.train_images} images in {result.seconds:.0f} s -> {out}",
          file=sys.stdout)
    return EXIT_OK
