#!/usr/bin/env python
"""Paired, interleaved timing of two attacks (e.g. ``l0tre-fast`` against ``ta-Pixle``).

``attack_compare.py`` runs each method to completion, one after the other. On a shared host
whose speed drifts by tens of percent within minutes, two methods timed an hour apart are
compared under different conditions (measured: torchattacks Pixle 0.158–0.243 CPU s/image on
the same 94 CIFAR-10 images within one hour). Here both methods attack the *same chunk* of
images back to back, the order alternating from chunk to chunk and round to round, so each
ratio compares the two under (nearly) the same host state. Settings, model, inputs and scoring
are those of ``attack_compare.py`` (imported from it)::

    L0TRE_DATA=/work/shared/data .venv-compare/bin/python benchmarks/attack_pair_timing.py \\
        --workload cifar --methods l0tre-fast,ta-Pixle --rounds 3 --threads 1

Prints one line per chunk and a summary (per-chunk CPU-time ratio A / B: median, range;
total CPU s/image of each) and writes JSON (``--json-out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attack_compare as ac  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=list(ac.WORKLOADS), default="cifar")
    ap.add_argument("--methods", default="l0tre-fast,ta-Pixle", help="two methods of attack_compare.py, A,B")
    ap.add_argument("--limit", type=int, default=None, help="images loaded (default: the workload's)")
    ap.add_argument("--start", type=int, default=0, help="first test image loaded (default 0)")
    ap.add_argument("--chunk", type=int, default=20, help="images per call and per timed pair")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    names = args.methods.split(",")
    if len(names) != 2 or any(n not in ac.ALL_METHODS for n in names):
        ap.error(f"--methods: expected two of {ac.ALL_METHODS}, got {args.methods!r}")
    if args.rounds < 1 or args.chunk < 1:
        ap.error("--rounds and --chunk must be positive")
    torch.set_num_threads(args.threads)

    spec = ac.WORKLOADS[args.workload]
    limit = args.limit if args.limit is not None else spec["default_limit"]
    import l0tre

    clf = l0tre.load_model(spec["model"], device=args.device, data_root=args.data_root)
    data = l0tre.load_data(spec["data"], data_root=args.data_root, limit=limit, start=args.start)
    if data.y is None:
        raise ValueError(f"{spec['data']}: labels are needed")
    keep = clf.predict(data.x) == data.y
    x, y = data.x[keep].contiguous(), data.y[keep].contiguous()
    net = ac.PixelSpaceNet(clf).to(args.device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    methods = {n: ac.build_method(n, net, shape, args.device, args.workload, args.seed, args.chunk) for n in names}

    pairs: list[dict[str, Any]] = []
    cpu_total = dict.fromkeys(names, 0.0)
    images = 0
    for r in range(args.rounds):
        for k, c0 in enumerate(range(0, x.shape[0], args.chunk)):
            xb, yb = x[c0 : c0 + args.chunk], y[c0 : c0 + args.chunk]
            order = names if (r + k) % 2 == 0 else names[::-1]
            row: dict[str, Any] = {"round": r, "first": order[0], "images": int(xb.shape[0])}
            for n in order:
                ac.seed_all(args.seed + c0)
                t0 = time.process_time()
                adv = methods[n].run(xb.clone(), yb.clone())
                cpu = time.process_time() - t0
                ok, l0 = ac.score(net, xb, yb, adv, args.device)
                row[n] = {"cpu_s": cpu, "success": float(ok.mean()),
                          "mean_l0": float(l0[ok].mean()) if ok.any() else None,
                          "l0": [int(v) if bool(o) else None for v, o in zip(l0.tolist(), ok.tolist(), strict=True)]}
                cpu_total[n] += cpu
            row["ratio"] = row[names[0]]["cpu_s"] / max(row[names[1]]["cpu_s"], 1e-9)
            images += int(xb.shape[0])
            pairs.append(row)
            print(f"round {r} images {c0}-{c0 + xb.shape[0] - 1} ({order[0]} first): "
                  + ", ".join(f"{n} {row[n]['cpu_s'] / xb.shape[0]:.3f} CPU s/img" for n in names)
                  + f", ratio {row['ratio']:.2f}", flush=True)
    ratios = [p["ratio"] for p in pairs]
    summary = {
        "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "a_wins": sum(r < 1 for r in ratios), "pairs": len(ratios),
        "cpu_s_per_image": {n: cpu_total[n] / images for n in names},
    }
    print(f"{names[0]} / {names[1]} CPU time per chunk: median {summary['ratio_median']:.2f} "
          f"(range {summary['ratio_min']:.2f}–{summary['ratio_max']:.2f}); {names[0]} faster on "
          f"{summary['a_wins']} of {len(ratios)} pairs; CPU s/image "
          + ", ".join(f"{n} {v:.3f}" for n, v in summary["cpu_s_per_image"].items()))
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        out = {"command": " ".join(sys.argv), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "workload": args.workload, "methods": names, "threads": args.threads, "chunk": args.chunk,
               "rounds": args.rounds, "torch": torch.__version__, "source": ac._source_state(),
               "summary": summary, "pairs": pairs, "numpy": np.__version__}
        args.json_out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
