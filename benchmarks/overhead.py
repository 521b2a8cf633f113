"""Host overhead of the engine: a CPU-measurable proxy for what dominates on a GPU (issue 21).

The engine runs on a model so cheap that its forward pass costs almost nothing (one linear
layer on 28×28 MNIST images), so its evaluations per second measure the engine's own work per
row and per call: building perturbed rows, merging, syncs. Printed: raw throughput of the
model at the engine's rows per call (the limit), the engine's evaluations/s, their ratio, model
calls and rows per call (a counting wrapper sees every call).

    python benchmarks/overhead.py --images 1000 --epsilon 0.25
    python benchmarks/overhead.py --device cuda --images 10000   # on a GPU machine

Writes JSON to benchmarks/results/overhead.json (or --json-out).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

import l0tre
from l0tre.execution.modes import time_forward

HERE = Path(__file__).resolve().parent


class Counting(nn.Module):
    """Counts calls and rows of the wrapped module."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += int(x.shape[0])
        return self.inner(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--epsilon", type=float, default=0.25)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    ap.add_argument("--json-out", default=str(HERE / "results" / "overhead.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("L0TRE_TUNING_CACHE", "off")
    root = os.environ.get("L0TRE_DATA", str(HERE.parent.parent / "shared" / "data"))
    x = l0tre.load_data("mnist:test", data_root=root, limit=args.images).x
    torch.manual_seed(0)
    net = Counting(nn.Sequential(nn.Flatten(), nn.Linear(784, 10))).eval().to(args.device)
    clf = l0tre.Classifier(net, device=args.device)
    engine = l0tre.api.prepare(clf, x, epsilon=args.epsilon, t_max=1, device=args.device, mode="eager")
    t0 = time.perf_counter()
    res = l0tre.engine.drive(engine)
    seconds = time.perf_counter() - t0
    calls, rows = net.calls, net.rows
    batch = engine.batch_size
    probe = torch.rand(batch, *x.shape[1:], device=args.device)
    limit = batch / time_forward(clf, probe, repeats=5)
    rate = res.evaluations / seconds
    row = {
        "images": args.images, "epsilon": args.epsilon, "device": args.device, "threads": args.threads,
        "seconds": seconds, "evaluations": res.evaluations, "evaluations_per_s": rate,
        "raw_limit_rows_per_s": limit, "ratio": rate / limit, "model_calls": calls, "rows": rows,
        "rows_per_call": rows / max(calls, 1), "calls_per_image": calls / args.images, "batch_size": batch,
        "global_lower": res.global_lower, "global_upper": res.global_upper, "torch": torch.__version__,
    }
    for k, v in row.items():
        print(f"{k:>22}: {v:,.4g}" if isinstance(v, float) else f"{k:>22}: {v}")
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
