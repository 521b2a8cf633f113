"""Where a level's time goes with a parallel executor: the pass, and the per-input search
(upper-bound search + greedy tightening) that follows each shard's pass (E10).

    L0TRE_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/search_split.py \\
        --model /work/zoo/dnn-6.pt --images 200 --t-max 1 --workers 2

``--workers 0`` runs in this process (one thread). Prints a table (wall seconds of the run and of
the searches, evaluations, global bounds) and writes benchmarks/results/search_split.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import l0tre
import l0tre.engine.loop as loop

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="mnist:test")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--t-max", type=int, default=1)
    p.add_argument("--workers", type=int, default=2, help="Ray workers (0: in this process)")
    p.add_argument("--json-out", default=str(HERE / "results" / "search_split.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    root = os.environ.get("L0TRE_DATA", str(HERE.parent.parent / "shared" / "data"))
    clf = l0tre.load_model(args.model, data_root=root)
    x = l0tre.load_data(args.data, data_root=root, limit=args.images).x
    spent = {"search": 0.0}
    finish = loop.finish_shard

    def timed(*a: object, **k: object) -> int:
        t0 = time.perf_counter()
        try:
            return finish(*a, **k)  # type: ignore[arg-type]
        finally:
            spent["search"] += time.perf_counter() - t0

    loop.finish_shard = timed  # type: ignore[assignment]
    executor = None
    if args.workers > 0:
        from l0tre.cluster import RayExecutor
        executor = RayExecutor(address=None, num_workers=args.workers).start()
        executor.pids()  # the workers are up before the clock starts
    t0 = time.perf_counter()
    res = l0tre.evaluate(clf, x, t_max=args.t_max, executor=executor, max_memory=4 << 30)
    wall = time.perf_counter() - t0
    if executor is not None:
        executor.close()
    row = {"model": args.model, "images": args.images, "t_max": args.t_max, "workers": args.workers,
           "wall_s": round(wall, 2), "search_s": round(spent["search"], 2), "evaluations": res.evaluations,
           "global_lower": float(res.global_lower), "global_upper": float(res.global_upper)}
    print("| " + " | ".join(row) + " |\n| " + " | ".join("---" for _ in row) + " |", file=sys.stdout)
    print("| " + " | ".join(str(v) for v in row.values()) + " |")
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
