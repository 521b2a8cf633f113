"""t = 3 on the 28×28 sDNN: time the decomposition and project the connected triples.

For each image: (1) :func:`l0tre.certify.triples.certify_triples_separable` (single-pixel
bounds, every close pair, failure enumeration — what the component route does before the
connected triples), timed; (2) a seeded random sample of connected triples bounded one-shot with
CROWN, the misses halved twice (:func:`l0tre.certify.bab.prove_by_halving`), timed, and the time
for all connected triples projected from it. Prints a table and writes JSON.

    L0TRE_DATA=../../shared/data ../.venv/bin/python certify_t3_sample.py --images 0,1,2 --sample 2000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mnist14
import torch

from l0tre.certify.bab import prove_by_halving
from l0tre.certify.boxes import bound_margins, subset_boxes
from l0tre.certify.separable import feature_overlaps
from l0tre.certify.settings import CertifySettings
from l0tre.certify.target import resolve
from l0tre.certify.triples import certify_triples_separable, connected_triples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default="0", help="comma-separated test image indices")
    p.add_argument("--sample", type=int, default=2000, help="connected triples sampled per image")
    p.add_argument("--size", type=int, choices=(14, 28), default=28)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-decomposition", action="store_true", help="skip step (1)")
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    idx = [int(v) for v in args.images.split(",")]
    clf = mnist14.sdnn(args.size)
    ds = mnist14.images(args.size, "test", start=0, limit=max(idx) + 1)
    if ds.y is None:
        raise SystemExit("the MNIST test labels are needed")
    labels = ds.y
    target = resolve(clf, (1, args.size, args.size), dtype=torch.float64)
    ov = feature_overlaps(target)
    if ov is None:
        raise SystemExit("no overlap structure for this model")
    tri = connected_triples(ov)
    opts = CertifySettings(method="crown")
    rows = []
    print(f"{'image':>5} {'decomposed proven':>17} {'remaining':>9} {'sec':>6} | {'one-shot':>8} {'halved x2':>9} "
          f"{'ms/triple':>9} {'all connected (h)':>17}")
    for i in idx:
        x0, y = ds.x[i].double(), int(labels[i])
        row: dict[str, object] = {"index": i, "label": y, "connected_triples": int(tri.shape[0])}
        if not args.no_decomposition:
            t0 = time.perf_counter()
            out = certify_triples_separable(target, x0, y, ov, opts, features="pixel",
                                            deadline=time.perf_counter() + 3600)
            row.update(decomposed_proven=out.proven, remaining=int(out.remaining.shape[0]),
                       decomposition_seconds=time.perf_counter() - t0, counterexample_subset=out.subset,
                       timed_out=out.timed_out)
        sel = torch.randperm(tri.shape[0], generator=torch.Generator().manual_seed(i))[: args.sample]
        lo, hi = subset_boxes(x0, tri[sel])
        lab = torch.tensor([y]).expand(lo.shape[0])
        t0 = time.perf_counter()
        once = (bound_margins(target, lo, hi, lab, opts) > 1e-6).all(1)
        miss = (~once).nonzero().flatten()
        halved, pieces = prove_by_halving(target, lo[miss], hi[miss], lab[miss], opts, rounds=2)
        sec = time.perf_counter() - t0
        per = sec / lo.shape[0]
        row.update(sample=int(lo.shape[0]), one_shot=float(once.float().mean()),
                   after_halving=1 - int((~halved).sum()) / lo.shape[0], pieces=pieces,
                   ms_per_triple=1e3 * per, projected_hours=per * tri.shape[0] / 3600)
        rows.append(row)
        print(f"{i:>5} {row.get('decomposed_proven', '-')!s:>17} {row.get('remaining', '-')!s:>9} "
              f"{row.get('decomposition_seconds', 0.0):>6.1f} | {row['one_shot']:>8.3f} {row['after_halving']:>9.4f} "
              f"{row['ms_per_triple']:>9.1f} {row['projected_hours']:>17.1f}", flush=True)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({"config": vars(args) | {"json_out": str(args.json_out)},
                                             "torch": torch.__version__, "images": rows}, indent=1))
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
