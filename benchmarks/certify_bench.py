"""Certified L0 robustness at level t (default 1): fraction of inputs certified, time per image.

For each image: ``certify_level`` (covering boxes + branch and bound on the single subsets no
box proves) decides PROVEN / FALSIFIED / UNKNOWN. With ``--one-shot`` it also reports, per
bounding method, the fraction of single features proven without branching and the time.

    python benchmarks/certify_bench.py --model paper-mnist --data mnist:test --images 5
    python benchmarks/certify_bench.py --model mnist14-sdnn --images 20 --t 2   # 14x14 sDNN stand-in
    python benchmarks/certify_bench.py --model mnist28-sdnn --images 10 --t 2   # same architecture, 28x28
    python benchmarks/certify_bench.py --module mypkg.nets:make_net --weights net.pt \\
        --data digits.npz --images 10 --method crown --dtype float32

Prints a table and writes JSON to benchmarks/results/certify.json (or --json-out).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from l0tre.certify import LEVEL_SETTINGS, CertifySettings, Status, certify_level, certify_subsets
from l0tre.certify.separable import feature_overlaps
from l0tre.certify.target import Target, resolve

HERE = Path(__file__).resolve().parent
#: the benchmarks' sDNN stand-ins (benchmarks/mnist14.py) and their input side
SDNN = {"mnist14-sdnn": 14, "mnist28-sdnn": 28}


def _load_target(args: argparse.Namespace, dtype: torch.dtype) -> tuple[Target, Any]:
    """The model (a registry name, or ``module:constructor`` + weights) as a Target."""
    if args.module:
        mod_name, _, ctor = args.module.partition(":")
        net = getattr(importlib.import_module(mod_name), ctor or "build")()
        if not isinstance(net, nn.Module):
            raise SystemExit(f"--module: {args.module} did not return an nn.Module")
        if args.weights:
            state = torch.load(args.weights, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        net.eval().to(args.device)
        pre = None
        if args.mean is not None:
            pre = (tuple(args.mean), tuple(args.std or [1.0] * len(args.mean)))
        shape = tuple(args.input_shape)
        return resolve(net, shape, preprocessing=pre, dtype=dtype), None
    from l0tre.models import load_model

    if args.model in SDNN:  # the benchmarks' stand-ins for the paper's sDNN (14x14, 28x28)
        import mnist14

        size = SDNN[args.model]
        clf = mnist14.sdnn(size)
        return resolve(clf, (1, size, size), dtype=dtype), clf
    clf = load_model(args.model, device=args.device)
    shape = clf.input_shape or tuple(args.input_shape)
    return resolve(clf, tuple(shape), dtype=dtype), clf


def _load_images(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor | None]:
    from l0tre.data import load_data

    if args.model in SDNN:
        import mnist14

        ds = mnist14.images(SDNN[args.model], "test", start=args.start, limit=args.images)
        return ds.x, ds.y
    ds = load_data(args.data, start=args.start, limit=args.images)
    return ds.x, ds.y


def _one_shot_subsets(n: int, t: int, sample: int) -> torch.Tensor:
    """Every feature (``t = 1``) or ``sample`` distinct random ``t``-subsets (seed 0), ``(S, t)``."""
    if t == 1:
        return torch.arange(n).view(-1, 1)
    gen = torch.Generator().manual_seed(0)
    seen: set[tuple[int, ...]] = set()
    sample = min(sample, math.comb(n, t))
    while len(seen) < sample:
        subset = tuple(sorted(torch.randperm(n, generator=gen)[:t].tolist()))
        seen.add(subset)
    return torch.tensor(sorted(seen), dtype=torch.int64)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="paper-mnist", help="l0tre model name (load_model)")
    p.add_argument("--module", help="MODULE:CONSTRUCTOR returning an nn.Module (instead of --model)")
    p.add_argument("--weights", help="state dict for --module")
    p.add_argument("--input-shape", type=int, nargs=3, default=[1, 28, 28], metavar=("C", "H", "W"))
    p.add_argument("--mean", type=float, nargs="+", help="normalisation mean for --module")
    p.add_argument("--std", type=float, nargs="+", help="normalisation std for --module")
    p.add_argument("--data", default="mnist:test", help="l0tre data spec (load_data)")
    p.add_argument("--images", type=int, default=5)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--t", type=int, default=1)
    p.add_argument("--features", choices=["pixel", "element"], default="pixel")
    p.add_argument("--method", choices=["ibp", "forward", "crown", "hybrid"], default="hybrid")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--block", type=int, default=None, help="initial patch side of the covering")
    p.add_argument("--time-limit", type=float, default=300.0, help="seconds per image")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--device", default=None, help="cpu / cuda (default: the model's)")
    p.add_argument("--one-shot", action="store_true",
                   help="also bound every single feature (t = 1) or --one-shot-sample random "
                        "t-subsets once per method (no branching)")
    p.add_argument("--one-shot-sample", type=int, default=1000,
                   help="t >= 2: random t-subsets per image for --one-shot (seeded)")
    p.add_argument("--no-level", action="store_true",
                   help="skip the per-image level decision (with --one-shot: one-shot bounds only)")
    p.add_argument("--no-separable", action="store_true",
                   help="t = 2, 3: box covering only (no separable pairs / triples from single-pixel bounds)")
    p.add_argument("--json-out", default=str(HERE / "results" / "certify.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    target, clf = _load_target(args, dtype)
    x, y = _load_images(args)
    preds = target.predict(x.to(target.graph.device)).cpu()
    separable = not args.no_separable
    overlaps = feature_overlaps(target, args.features) if args.t in (2, 3) and separable else None
    settings = CertifySettings.build(LEVEL_SETTINGS, method=args.method, block=args.block, time_limit=args.time_limit,
                                     batch_size=args.batch_size, dtype=dtype,
                                     separable=separable and overlaps is not None)
    rows: list[dict[str, Any]] = []
    print(f"{'#':>4} {'label':>5} {'pred':>4} {'status':>9} {'boxes':>6} {'proven':>6} "
          f"{'singles':>7} {'bab':>6} {'sec':>7}")
    for i in range(x.shape[0]):
        label = int(y[i]) if y is not None else int(preds[i])
        t0 = time.perf_counter()
        if int(preds[i]) != label:
            row = {"index": args.start + i, "label": label, "pred": int(preds[i]), "status": "misclassified",
                   "seconds": 0.0}
        elif args.no_level:
            row = {"index": args.start + i, "label": label, "pred": int(preds[i]), "status": "skipped",
                   "seconds": 0.0}
        else:
            res = certify_level(target, x[i], label, args.t, features=args.features, settings=settings,
                                overlaps=overlaps)
            row = {"index": args.start + i, "label": label, "pred": int(preds[i]), "status": res.status.value,
                   "boxes_tried": res.boxes_tried, "boxes_proven": res.boxes_proven,
                   "singles": res.subsets_checked, "bab_nodes": res.bab_nodes,
                   "seconds": time.perf_counter() - t0, "block_sizes": res.block_sizes,
                   "counterexample_subset": res.counterexample_subset,
                   "separable_pairs": res.separable_pairs, "separable_triples": res.separable_triples}
        rows.append(row)
        print(f"{args.start + i:>4} {label:>5} {row['pred']:>4} {row['status']:>9} "
              f"{row.get('boxes_tried', 0):>6} {row.get('boxes_proven', 0):>6} "
              f"{row.get('singles', 0):>7} {row.get('bab_nodes', 0):>6} {row['seconds']:>7.1f}",
              flush=True)
    one_shot = []
    if args.one_shot:
        n_feat = x.shape[2] * x.shape[3] * (1 if args.features == "pixel" else x.shape[1])
        subsets = _one_shot_subsets(n_feat, args.t, args.one_shot_sample)
        what = "single features" if args.t == 1 else f"{subsets.shape[0]} random {args.t}-subsets"
        for method in ("ibp", "forward", "hybrid", "crown"):
            proven = total = 0
            t0 = time.perf_counter()
            for i in range(x.shape[0]):
                label = int(y[i]) if y is not None else int(preds[i])
                r = certify_subsets(target, x[i], label, subsets, features=args.features,
                                    settings=CertifySettings.build(settings, method=method))
                proven += r.n_proven
                total += subsets.shape[0]
            sec = (time.perf_counter() - t0) / max(1, x.shape[0])
            rate = total / max(1e-9, sec * max(1, x.shape[0]))
            entry = {"method": method, "t": args.t, "subsets_per_image": subsets.shape[0],
                     "fraction_proven": proven / total, "seconds_per_image": sec,
                     "boxes_per_second": rate}
            if args.t == 1:
                entry["fraction_single_features_proven"] = proven / total  # earlier rounds' key
            one_shot.append(entry)
            print(f"one-shot {method:>8}: {proven / total:6.1%} of {what} proven, "
                  f"{sec:.2f} s/image ({rate:.0f} boxes/s)", flush=True)
    done = [r for r in rows if r["status"] != "misclassified"]
    summary = {
        "images": len(rows),
        "correct": len(done),
        "certified_fraction": sum(r["status"] == Status.PROVEN.value for r in rows) / max(1, len(rows)),
        "falsified_fraction": sum(r["status"] == Status.FALSIFIED.value for r in rows) / max(1, len(rows)),
        "unknown_fraction": sum(r["status"] == Status.UNKNOWN.value for r in rows) / max(1, len(rows)),
        "seconds_per_image": sum(r["seconds"] for r in done) / max(1, len(done)),
    }
    if not args.no_level:
        print(f"level {args.t}: certified {summary['certified_fraction']:.1%}, falsified "
              f"{summary['falsified_fraction']:.1%}, unknown {summary['unknown_fraction']:.1%} of "
              f"{len(rows)} images; {summary['seconds_per_image']:.1f} s per image")
    out = {
        "config": {k: v for k, v in vars(args).items() if k != "json_out"},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "device": str(target.graph.device), "threads": torch.get_num_threads(),
                        "platform": platform.platform(), "cpu": platform.processor() or platform.machine()},
        # the sDNN stand-ins are trained here: the weights can differ between CPUs (kernel rounding)
        "model_fingerprint": None if clf is None else clf.fingerprint(),
        "summary": summary,
        "images": rows,
        "one_shot": one_shot,
    }
    path = Path(args.json_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
