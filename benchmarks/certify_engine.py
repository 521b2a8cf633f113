"""Certified vs grid lower bounds through the engine (issue: certification, benchmark 1).

Runs ``l0tre.evaluate(..., t_max=T)`` twice on the same images — grid only, then with
``certify=True`` — and reports the fraction of inputs whose ``certified_lower`` equals the grid
``lower`` (the target is ≥ 95 % at t = 1 on the first 100 paper-mnist test images), the time
per image of both runs, and where they differ.

    python benchmarks/certify_engine.py --model paper-mnist --images 100 --t-max 1

Prints a table and writes JSON to benchmarks/results/certify_engine.json (or --json-out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import l0tre

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="paper-mnist")
    p.add_argument("--data", default="mnist:test")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--t-max", type=int, default=1)
    p.add_argument("--epsilon", type=float, default=0.5)
    p.add_argument("--certify-time-limit", type=float, default=60.0, help="seconds per input and level")
    p.add_argument("--certify-method", default="hybrid")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json-out", default=str(HERE / "results" / "certify_engine.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = os.environ.get("L0TRE_DATA", str(HERE.parent.parent / "shared" / "data"))
    clf = l0tre.load_model(args.model, data_root=root)
    ds = l0tre.load_data(args.data, data_root=root, start=args.start, limit=args.images)
    common = {"epsilon": args.epsilon, "t_max": args.t_max, "labels": ds.y}

    t0 = time.perf_counter()
    grid = l0tre.evaluate(clf, ds.x, **common)
    grid_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cert = l0tre.evaluate(clf, ds.x, certify=True, certify_time_limit=args.certify_time_limit,
                          certify_method=args.certify_method, **common)
    cert_s = time.perf_counter() - t0
    if cert.certified_lower is None:
        raise SystemExit("certify=True returned no certified_lower")
    n = ds.x.shape[0]
    same = cert.certified_lower == cert.lower
    rows = []
    for i in range(n):
        rows.append({"index": int(ds.indices[i]), "label": int(ds.y[i]) if ds.y is not None else None,
                     "predicted": int(cert.predicted[i]), "lower": int(cert.lower[i]),
                     "certified_lower": int(cert.certified_lower[i]), "upper": int(cert.upper[i])})
    if not torch.equal(grid.lower, cert.lower) or not torch.equal(grid.upper, cert.upper):
        print("note: grid bounds differ between the two runs", file=sys.stderr)
    summary = {
        "images": n,
        "t_max": args.t_max,
        "epsilon": args.epsilon,
        "fraction_certified_equals_lower": float(same.float().mean()),
        "inputs_short": [r["index"] for r, s in zip(rows, same.tolist(), strict=True) if not s],
        "grid_seconds_per_image": grid_s / n,
        "certified_seconds_per_image": cert_s / n,
        "global_lower": grid.global_lower,
        "global_certified_lower": float(cert.certified_lower.float().mean()),
        "lower_histogram": torch.bincount(cert.lower, minlength=args.t_max + 1).tolist(),
    }
    print("| images | t_max | certified_lower == lower | grid s/image | grid+certify s/image |")
    print(f"| {n} | {args.t_max} | {summary['fraction_certified_equals_lower']:.1%} "
          f"| {summary['grid_seconds_per_image']:.2f} | {summary['certified_seconds_per_image']:.2f} |")
    if summary["inputs_short"]:
        print(f"not certified up to the grid lower bound: inputs {summary['inputs_short']}")
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(["benchmarks/certify_engine.py", *(argv or sys.argv[1:])]),
                               "torch": torch.__version__, "threads": torch.get_num_threads(),
                               "machine": platform.machine(), "summary": summary, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
