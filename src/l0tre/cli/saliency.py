"""``l0tre saliency``: per-pixel sensitivity maps and single-pixel flips (paper case study 5).

Writes ``saliency.npz`` (the maps, inputs and bounds), ``results.json``, one PNG per image
(``image | heat map | flipping pixels``, raw colour bar), ``saliency_grid.png`` and ``index.html``.
A folder that holds a run is refused without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..atomic import OutputError
from ..outdir import check_writable_folder, remove_run_files
from .common import check_forward, image_shape, notice, output_errors, refuse_to_replace
from .parsing import EXIT_ERROR, EXIT_OK, Subparsers, parse_indices

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Subparsers) -> None:
    """Register the ``saliency`` subcommand."""
    p = subparsers.add_parser(
        "saliency", help="saliency maps: how far one pixel moves the decision, and which pixels flip it",
        description="Level-1 sensitivity of every pixel (every grid colour), the pixels whose single change "
        "flips the label (re-checked in float32), PNG overlays with a raw colour bar and index.html.",
    )
    p.add_argument("--model", required=True, help="built-in model name or model file (.pt, TorchScript, ONNX, ...)")
    p.add_argument("--data", required=True, help="mnist:test, cifar10:test, an image folder, .npy/.npz")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    p.add_argument("--epsilon", type=float, default=0.5, help="value grid step, must divide 1 (default 0.5)")
    p.add_argument("--score", choices=("margin", "confidence"), default="margin",
                   help="what drops: the margin z_j - max z_k (default) or the softmax confidence c_j")
    p.add_argument("--pixels", default="all",
                   help="all (default), sample:K or top:K (gradient screen per image); not all: no lower bound")
    p.add_argument("--baseline", type=float, default=None,
                   help="only the grid colour with every channel at this value (as captum FeatureAblation)")
    p.add_argument("--preprocess", choices=("none", "imagenet"), default="none",
                   help="image folders: imagenet = resize 256, centre crop 224; its mean/std go into the model")
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="bfloat16 screening with float32 re-checks near the boundary (auto: on CUDA GPUs)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default: CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per model call")
    p.add_argument("--limit", type=int, default=None, help="at most this many inputs")
    p.add_argument("--indices", default=None, help="positions in the data set, e.g. 0,5,10-19")
    p.add_argument("--figures", type=int, default=20, help="per-image PNGs for the first N inputs (default 20)")
    p.add_argument("--data-root", default=None, help="shared data directory (else $L0TRE_DATA)")
    p.add_argument("--trust-pickle", action="store_true", help="allow model files that hold pickled code")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("--json", action="store_true", help="print results.json to stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``l0tre saliency``; returns the exit status (0 ok, 2 bad arguments, inputs or --out)."""
    from ..apps.saliency.core import saliency
    from ..apps.saliency.outputs import write_saliency_outputs
    from ..classifier import Preprocessing
    from ..data import load_data
    from ..models import load_model
    from ..readers.images import IMAGENET_MEAN, IMAGENET_STD

    out = Path(args.out)
    try:
        refuse_to_replace(out, resume=None, overwrite=args.overwrite)
        if args.figures < 0:
            raise ValueError(f"--figures: expected an integer >= 0, got {args.figures}")
        indices = parse_indices(args.indices) if args.indices else None
        imagenet = args.preprocess == "imagenet"
        pre = Preprocessing(IMAGENET_MEAN, IMAGENET_STD) if imagenet else None
        clf = load_model(args.model, device=args.device, data_root=args.data_root, trust_pickle=args.trust_pickle,
                         preprocessing=pre)
        data = load_data(args.data, data_root=args.data_root, limit=args.limit, indices=indices,
                         input_shape=image_shape(clf), preprocess=args.preprocess)
        for note in data.notes:
            notice(args, f"data: {note}")
        if len(data) == 0:
            raise ValueError(f"data: expected at least one input, got none from {args.data!r}")
        check_forward(clf, data.x)
        check_writable_folder(out, argument="--out")
        if args.overwrite and remove_run_files(out, argument="--out"):
            notice(args, f"overwrite: replacing the earlier run in {str(out)!r}")
        res = saliency(clf, data.x, labels=data.y, epsilon=args.epsilon, score=args.score, pixels=args.pixels,
                       baseline=args.baseline, batch_size=args.batch_size, precision=args.precision,
                       show_progress=not args.quiet)
        config = {"command": "saliency", "model": str(args.model), "data": str(args.data),
                  "preprocess": args.preprocess}
        with output_errors("--out"):
            payload = write_saliency_outputs(out, res, data.x, data.indices.tolist(), config, clf.bounds,
                                             args.figures)
    except (ValueError, TypeError, FileNotFoundError, OutputError) as exc:
        print(f"l0tre saliency: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(payload, indent=1))
    elif not args.quiet:
        s = payload["summary"]
        lower = "lower bound proven" if s["lower_bound_claimed"] else "no lower bound claimed"
        print(f"saliency of {s['inputs']} input(s): {s['flipping_pixels']} flipping pixel(s) in "
              f"{s['inputs_with_flip']} input(s), {lower}, {s['seconds_per_image']:.3f} s/image → {args.out}")
    return EXIT_OK
