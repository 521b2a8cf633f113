"""Certified lower bounds on CPU and CUDA: equal certificates, and the speed of each (issue 21).

Runs ``l0tre.evaluate(..., certify="only", t_max=T)`` on the same images on the CPU and on
CUDA; prints per-device seconds per image, whether the certified bounds agree on the images
both ran, and writes JSON.

    python benchmarks/certify_devices.py --images-cuda 20 --images-cpu 5 --t-max 1

Writes JSON to benchmarks/results/certify_devices.json (or --json-out).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import l0tre

HERE = Path(__file__).resolve().parent


def run(device: str, x: torch.Tensor, args: argparse.Namespace) -> tuple[torch.Tensor, float]:
    clf = l0tre.load_model(args.model, device=device)
    t0 = time.perf_counter()
    res = l0tre.evaluate(clf, x, epsilon=args.epsilon, t_max=args.t_max, certify="only", device=device,
                         certify_method=args.certify_method, certify_time_limit=args.time_limit)
    assert res.certified_lower is not None
    return res.certified_lower.cpu(), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="paper-mnist")
    ap.add_argument("--images-cuda", type=int, default=20)
    ap.add_argument("--images-cpu", type=int, default=5)
    ap.add_argument("--t-max", type=int, default=1)
    ap.add_argument("--epsilon", type=float, default=0.5)
    ap.add_argument("--certify-method", default="auto")
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--json-out", default=str(HERE / "results" / "certify_devices.json"))
    args = ap.parse_args()
    root = os.environ.get("L0TRE_DATA", str(HERE.parent.parent / "shared" / "data"))
    n = max(args.images_cuda, args.images_cpu)
    x = l0tre.load_data("mnist:test", data_root=root, limit=n).x
    rows: dict[str, object] = {"model": args.model, "t_max": args.t_max, "epsilon": args.epsilon,
                               "method": args.certify_method, "threads": torch.get_num_threads()}
    cpu, cpu_s = run("cpu", x[: args.images_cpu], args)
    rows.update(cpu_images=args.images_cpu, cpu_seconds_per_image=cpu_s / args.images_cpu,
                cpu_certified=cpu.tolist())
    if torch.cuda.is_available():
        gpu, gpu_s = run("cuda", x[: args.images_cuda], args)
        k = min(args.images_cpu, args.images_cuda)
        rows.update(cuda_images=args.images_cuda, cuda_seconds_per_image=gpu_s / args.images_cuda,
                    cuda_certified=gpu.tolist(), equal_on_common=bool(torch.equal(gpu[:k], cpu[:k])),
                    speedup=(cpu_s / args.images_cpu) / (gpu_s / args.images_cuda))
    for k, v in rows.items():
        print(f"{k:>24}: {v}")
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
