"""Time for a full level t=2 on 28×28 MNIST (issue: performance; target ≤ 60 s per image on 2 CPU cores).

    python benchmarks/level2.py --images 1 --epsilon 0.5

Prints a table and writes benchmarks/results/level2.json.
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

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="paper-mnist")
    p.add_argument("--data", default="mnist:test", help="data spec (paper-sdnn: mnist14:test)")
    p.add_argument("--images", type=int, default=1)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--epsilon", type=float, default=0.5)
    p.add_argument("--mode", default="auto")
    p.add_argument("--json-out", default=str(HERE / "results" / "level2.json"))
    args = p.parse_args()
    root = os.environ.get("L0TRE_DATA", str(HERE.parent.parent / "shared" / "data"))
    clf = l0tre.load_model(args.model, data_root=root)
    x = l0tre.load_data(args.data, data_root=root, start=args.start, limit=args.images).x
    rows = []
    for i in range(x.shape[0]):
        t0 = time.perf_counter()
        eng = l0tre.api.prepare(clf, x[i : i + 1], epsilon=args.epsilon, t_max=2, mode=args.mode)
        need = [eng.level_evaluations(t) for t in (1, 2)]
        res = list(eng.run())[-1]
        sec = time.perf_counter() - t0
        rows.append({"image": args.start + i, "seconds": sec, "evaluations": res.evaluations,
                     "evaluations_needed_t1_t2": need, "evaluations_per_s": res.evaluations / sec,
                     "lower": int(res.lower[0]), "upper": int(res.upper[0]), "t": res.t, "stopped": res.stopped,
                     "level_seconds": res.level_seconds, "mode": clf.mode, "batch": eng.batch_size})
        r = rows[-1]
        levels = [round(s, 1) for s in r["level_seconds"]]
        print(f"image {r['image']}: {sec:.1f} s, {r['evaluations']:,} evals ({r['evaluations_per_s']:.0f}/s), "
              f"levels {levels} s, bounds [{r['lower']}, {r['upper']}], {r['stopped']}", flush=True)
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv), "torch_threads": torch.get_num_threads(),
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
