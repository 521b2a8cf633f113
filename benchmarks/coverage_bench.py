"""Coverage targets of issue 17: ``l0tre coverage`` runs timed as whole processes (start-up
included), and the baselines (coverage of the seeds, and of the whole MNIST test set).

    L0TRE_DATA=/path/to/shared/data OMP_NUM_THREADS=1 python benchmarks/coverage_bench.py \
        [--runs paper-mnist:channel,paper-mnist:element,cifar10-resnet20:channel,cifar10-resnet20:element] \
        [--t-max 4] [--time-budget 9m] [--out benchmarks/results/coverage.json]

Prints one table row per run (before, after, unreachable, after of the reachable neurons, tests,
mean L0, adversarial, wall seconds) and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DATA = {"paper-mnist": "mnist:test", "cifar10-resnet20": "cifar10:test"}


def _whole_test_set(model: str, kind: str) -> float | None:
    """Coverage of the whole 10k MNIST test set (measured only; ``None`` for other models)."""
    if model != "paper-mnist":
        return None
    import l0tre

    clf = l0tre.load_model(model)
    x = l0tre.load_data(DATA[model]).x
    return l0tre.coverage(clf, x, neurons=kind, t_max=0, batch_size=500).coverage_before


def _run(model: str, kind: str, t_max: int, budget: str | None, extra: list[str], keep: str | None = None,
         ) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{keep}/{model}_{kind}" if keep else f"{tmp}/out"
        cmd = [sys.executable, "-m", "l0tre", "coverage", "--model", model, "--data", DATA[model], "--limit", "100",
               "--neurons", kind, "--t-max", str(t_max), "--out", out, "--quiet", *extra]
        if budget:
            cmd += ["--time-budget", budget]
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - start
        res = json.loads(Path(f"{out}/results.json").read_text())
    cov, tests = res["coverage"], res["tests"]
    return {"model": model, "neurons": kind, "total": cov["total"], "before": cov["before"], "after": cov["after"],
            "unreachable": cov["unreachable"], "after_of_reachable": cov["after_of_reachable"],
            "tests": tests["count"], "mean_l0": tests["mean_l0"], "adversarial": tests["adversarial"],
            "stopped": res["stopped"], "levels": res["levels"], "wall_s": round(wall, 1), "command": " ".join(cmd[1:])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="paper-mnist:channel,paper-mnist:element")
    p.add_argument("--t-max", type=int, default=4)
    p.add_argument("--time-budget", default=None)
    p.add_argument("--whole-test-set", action="store_true", help="also measure the 10k MNIST test set")
    p.add_argument("--extra", default="", help="more l0tre coverage options, space separated")
    p.add_argument("--out", default="benchmarks/results/coverage.json")
    p.add_argument("--keep", default=None, help="keep each run's output folder under this folder")
    args = p.parse_args()
    if not os.environ.get("L0TRE_DATA"):
        print("set L0TRE_DATA to the shared data folder", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    rows = []
    for spec in args.runs.split(","):
        model, kind = spec.split(":")
        row = _run(model, kind, args.t_max, args.time_budget, args.extra.split(), args.keep)
        if args.whole_test_set:
            row["whole_test_set"] = _whole_test_set(model, kind)
        rows.append(row)
        print(f"{model:18s} {kind:8s} total {row['total']:7d} before {100 * row['before']:6.2f} % "  # type: ignore[operator]
              f"after {100 * row['after']:6.2f} % unreachable {row['unreachable']} "  # type: ignore[operator]
              f"reachable-after {100 * row['after_of_reachable']:6.2f} % tests {row['tests']} "  # type: ignore[operator]
              f"mean L0 {row['mean_l0']} adversarial {row['adversarial']} wall {row['wall_s']} s "
              f"({row['stopped']})" + (f" whole test set {100 * row['whole_test_set']:.2f} %"  # type: ignore[operator]
                                      if row.get("whole_test_set") is not None else ""), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
