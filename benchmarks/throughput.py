"""Engine throughput against the hardware limit (issue: performance).

Measures in ONE process:
  (a) the limit: best raw batched forward throughput of the model over eager / channels_last /
      torch.compile (optional) and a few batch sizes;
  (b) the engine's model evaluations per second during a full evaluation;
  (c) seconds per image, time to the first snapshot and to the first real upper bound;
and prints the ratio (b)/(a). With ``--scaling`` it also runs, each in a fresh subprocess
(for an honest peak RSS): time and peak memory vs number of inputs, and time vs t on a
14×14 MNIST model.

    python benchmarks/throughput.py --model paper-mnist --images 100 --t-max 1 --epsilon 0.25
    python benchmarks/throughput.py --scaling --json-out benchmarks/results/scaling.json

Writes JSON to benchmarks/results/throughput.json (or --json-out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

import l0tre
from l0tre.engine import ProgressHook
from l0tre.execution.modes import time_forward

HERE = Path(__file__).resolve().parent


def data_root() -> str:
    return os.environ.get("L0TRE_DATA", str(HERE.parent.parent / "shared" / "data"))


def raw_limit(clf: l0tre.Classifier, shape: tuple[int, ...], modes: list[str], batches: list[int]) -> list[dict]:
    rows = []
    for mode in modes:
        try:
            clf.set_mode(channels_last="channels_last" in mode, compile="compile" in mode)
        except Exception as exc:  # noqa: BLE001 - report, don't crash the benchmark
            rows.append({"mode": mode, "batch": None, "images_per_s": None, "error": str(exc)})
            continue
        for b in batches:
            x = torch.rand(b, *shape, device=clf.device)
            try:
                sec = time_forward(clf, x, repeats=3)
                rows.append({"mode": mode, "batch": b, "images_per_s": b / sec})
            except Exception as exc:  # noqa: BLE001
                rows.append({"mode": mode, "batch": b, "images_per_s": None, "error": str(exc)[:200]})
    clf.set_mode()
    return rows


class FirstEvents(ProgressHook):
    """Records when the first snapshot and the first real upper bound arrive."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.first_snapshot: float | None = None
        self.first_upper: float | None = None

    def snapshot(self, result: l0tre.Result) -> None:
        now = time.perf_counter() - self.start
        if self.first_snapshot is None:
            self.first_snapshot = now
        if self.first_upper is None and bool(result.found.any()):
            self.first_upper = now


def engine_run(args: argparse.Namespace, clf: l0tre.Classifier, x: torch.Tensor, mode: str) -> dict:
    start = time.perf_counter()
    hook = FirstEvents(start)
    res = l0tre.evaluate(clf, x, epsilon=args.epsilon, t_max=args.t_max, batch_size=args.batch_size,
                         mode=mode, progress=hook, report_every=0.5, max_memory=args.max_memory)
    wall = time.perf_counter() - start
    return {
        "mode_requested": mode, "mode_used": clf.mode, "seconds": wall,
        "seconds_per_image": wall / x.shape[0], "evaluations": res.evaluations,
        "evaluations_per_s": res.evaluations / wall, "first_snapshot_s": hook.first_snapshot,
        "first_upper_bound_s": hook.first_upper, "global_lower": res.global_lower,
        "global_upper": res.global_upper, "t": res.t,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child(args: argparse.Namespace) -> None:
    """One scaling point in a fresh process; prints one JSON line."""
    if args.child == "inputs":
        clf = l0tre.load_model(args.model, data_root=data_root())
        x = l0tre.load_data("mnist:test", data_root=data_root(), limit=args.images).x
    else:
        import mnist14

        clf = mnist14.sdnn14()
        x = mnist14.images14("test", limit=args.images).x
    out = engine_run(args, clf, x, args.mode)
    out["images"] = args.images
    print(json.dumps(out))


def scaling(args: argparse.Namespace) -> dict:
    def run(kind: str, images: int, t_max: int, epsilon: float) -> dict:
        cmd = [sys.executable, __file__, "--child", kind, "--images", str(images), "--t-max", str(t_max),
               "--epsilon", str(epsilon), "--model", args.model, "--mode", args.mode,
               "--max-memory", str(args.max_memory)]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    inputs = [run("inputs", n, 1, args.epsilon) for n in args.scaling_inputs]
    levels = [run("levels", args.scaling_t_images, t, 0.5) for t in (1, 2)]
    return {"vs_inputs": inputs, "vs_t_14x14": levels}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="paper-mnist")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--t-max", type=int, default=1)
    p.add_argument("--epsilon", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-memory", type=int, default=1 << 30)
    p.add_argument("--mode", default="auto")
    p.add_argument("--compile", action="store_true", help="include torch.compile in the limit")
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit-batches", type=int, nargs="+", default=None,
                   help="batch sizes of the raw-forward limit (default: 128..1024 on CPU, 1024..65536 on CUDA)")
    p.add_argument("--scaling", action="store_true")
    p.add_argument("--scaling-inputs", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--scaling-t-images", type=int, default=2)
    p.add_argument("--json-out", default=str(HERE / "results" / "throughput.json"))
    p.add_argument("--child", choices=["inputs", "levels"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    report: dict = {"command": " ".join(sys.argv), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "machine": platform.machine(), "device": args.device}
    if args.scaling:
        report["scaling"] = scaling(args)
    else:
        clf = l0tre.load_model(args.model, data_root=data_root(), device=args.device)
        x = l0tre.load_data("mnist:test" if clf.input_shape == (1, 28, 28) else "cifar10:test",
                            data_root=data_root(), limit=args.images).x
        shape = tuple(x.shape[1:])
        modes = ["eager", "channels_last"] + (["compile+channels_last"] if args.compile else [])
        batches = args.limit_batches or ([1024, 4096, 16384, 65536] if clf.device.type == "cuda"
                                         else [128, 256, 512, 1024])
        limit = raw_limit(clf, shape, modes, batches)
        best = max((r for r in limit if r.get("images_per_s")), key=lambda r: r["images_per_s"])
        run = engine_run(args, clf, x.to(clf.device), args.mode)
        run["ratio_to_limit"] = run["evaluations_per_s"] / best["images_per_s"]
        report.update({"limit": limit, "best_limit": best, "engine": run})
        print(f"{'mode':<24}{'batch':>7}{'images/s':>12}")
        for r in limit:
            ips = f"{r['images_per_s']:.0f}" if r.get("images_per_s") else "error"
            print(f"{r['mode']:<24}{str(r['batch']):>7}{ips:>12}")
        first_ub = run["first_upper_bound_s"]
        first_ub_txt = "none" if first_ub is None else f"{first_ub:.2f} s"
        print(f"\nengine ({run['mode_used']}): {run['evaluations_per_s']:.0f} evaluations/s, "
              f"ratio to limit {run['ratio_to_limit']:.2f}, {run['seconds_per_image']:.3f} s/image, "
              f"first snapshot {run['first_snapshot_s']:.2f} s, first upper bound {first_ub_txt}")
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    if args.scaling:
        print(json.dumps(report["scaling"], indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
