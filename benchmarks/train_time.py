"""Benchmark: CPU cost of ``l0tre train`` per architecture (target: each fits in minutes on 2 CPU cores).

Trains every trainable architecture of :data:`l0tre.models.zoo.ZOO` for one epoch on the first
``--images`` MNIST training images (one torch thread), and extrapolates to the default number of
epochs on all 60 000 images. Process CPU time is reported next to wall time, because a shared
host inflates wall time::

    OMP_NUM_THREADS=1 python benchmarks/train_time.py --images 1280 --write train_time.json

Prints a table and writes JSON with ``--write``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from l0tre.models.training import TrainConfig, train
from l0tre.models.zoo import ZOO


def measure(arch: str, images: int, data_root: str | None) -> dict[str, float | int | str]:
    """One epoch on ``images`` training images; seconds (wall and CPU) and the extrapolation."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = train(TrainConfig(arch, epochs=1, limit=images, test_limit=100, data_root=data_root,
                               show_progress=False))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    scale = ZOO[arch].epochs * 60000 / images
    return {"arch": arch, "images": images, "train_seconds": round(result.seconds, 2), "wall_seconds": round(wall, 2),
            "cpu_seconds": round(cpu, 2), "default_epochs": ZOO[arch].epochs,
            "full_cpu_minutes_estimate": round(cpu * scale / 60, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1280)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--write", default=None, metavar="JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [measure(a, args.images, args.data_root) for a in ZOO if ZOO[a].data != "cifar10"]
    print(f"{'arch':12} {'wall s':>8} {'cpu s':>8} {'epochs':>6} {'full run, CPU min (est.)':>26}")
    for r in rows:
        print(f"{r['arch']:12} {r['wall_seconds']:8} {r['cpu_seconds']:8} {r['default_epochs']:6} "
              f"{r['full_cpu_minutes_estimate']:26}")
    if args.write:
        with open(args.write, "w") as fh:
            json.dump({"benchmark": "train_time", "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
