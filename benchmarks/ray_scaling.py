"""Ray executor (issue 22): per-unit overhead, and 2 local workers vs the in-process run.

    OMP_NUM_THREADS=1 python benchmarks/ray_scaling.py --repeats 3 --json /tmp/ray_scaling.json

1. Overhead: a run made of many tiny work units (a 3×3 random MLP up to t = 9, 4 rows per model
   call) through the in-process executor and through Ray (actors and tasks, 2 workers, warm);
   the per-unit overhead is (Ray wall − in-process wall) / units.
2. Scaling: t = 2 work on MNIST test images (default: ``paper-sdnn`` on 14×14 images, levels 1
   and 2) in-process with one torch thread vs ``RayExecutor(num_workers=2)`` (one thread per
   worker) on a local Ray instance with ``num_cpus=2``; the speed-up is in-process wall / Ray
   wall, each the median of ``--repeats`` runs after one warm-up run. Bounds must be identical.
3. Sizes of what goes to the object store (run part, per-shard part) for that workload.

Prints a table and writes the numbers as JSON. The machine should be otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import ray
import torch
from ray import cloudpickle
from torch import nn

import l0tre
from l0tre.atomic import atomic_write_text
from l0tre.cluster import RayExecutor
from l0tre.cluster.shipping import pack, run_part, shard_part
from l0tre.engine.executor import Executor, InProcessExecutor, ShardTask, WorkUnit
from l0tre.engine.sensitivity import UnitResult


class Counting:
    """Wraps an executor: counts units and map calls, and measures the packed parts once per call."""

    def __init__(self, inner: Executor, sizes: bool = False) -> None:
        self.inner, self.units, self.calls, self.sizes = inner, 0, 0, sizes
        self.run_bytes = 0
        self.waited = 0.0  # seconds the loop waited for unit results (in-process: the units' work)
        self.shard_bytes: list[int] = []

    def map(self, task: ShardTask, units: Sequence[WorkUnit]) -> Generator[tuple[WorkUnit, UnitResult], None, None]:
        self.calls += 1
        if self.sizes:
            self.run_bytes = len(pack(run_part(task), cloudpickle.CloudPickler))
            self.shard_bytes.append(len(pack(shard_part(task), cloudpickle.CloudPickler)))
        results = self.inner.map(task, units)
        try:
            while True:
                t0 = time.perf_counter()
                item = next(results, None)
                self.waited += time.perf_counter() - t0
                if item is None:
                    break
                self.units += 1
                yield item
        finally:
            if isinstance(results, Generator):
                results.close()


class Steady(nn.Module):
    """Class 0 by a wide margin whatever the input: no bound moves, every level runs in full."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(36, 3, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor([10.0, 0.0, -1.0], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w + self.b


def _tiny() -> tuple[nn.Module, torch.Tensor]:
    x = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    return Steady(), x


def _timed(model: Any, x: torch.Tensor, executor: Executor, **kw: Any) -> tuple[float, l0tre.Result, Counting]:
    counting = Counting(executor, sizes=kw.pop("sizes", False))
    t0 = time.perf_counter()
    res = l0tre.evaluate(model, x, executor=counting, show_progress=False, **kw)
    return time.perf_counter() - t0, res, counting


def _same(a: l0tre.Result, b: l0tre.Result) -> bool:
    return (torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper)
            and torch.equal(a.adversarial, b.adversarial) and a.evaluations == b.evaluations)


#: (workers, in_flight, units_per_call)
OVERHEAD_CASES = (("actors", 1, 1), ("actors", 2, 1), ("actors", 2, 4), ("tasks", 1, 1), ("tasks", 2, 4))


def overhead(repeats: int) -> dict[str, Any]:
    """Per-unit overhead of one Ray worker over the in-process executor on tiny units (16 rows of
    a linear model, t <= 2 on 6×6 inputs): ``in_flight=1`` is the whole round trip of a unit,
    ``in_flight=2`` what is left when the next call waits queued on the worker, 4 units per call
    (the CPU default) what is left per unit when calls carry several."""
    model, x = _tiny()
    kw = {"epsilon": 0.5, "t_max": 2, "batch_size": 1}
    out: dict[str, Any] = {}
    base = [_timed(model, x, InProcessExecutor(), **kw) for _ in range(repeats + 1)][1:]
    t_in = statistics.median(b[0] for b in base)
    units = base[0][2].units
    out["units"] = units
    out["in_process_s"] = t_in
    out["in_process_ms_per_unit"] = 1000 * t_in / units
    for kind, depth, per_call in OVERHEAD_CASES:
        with RayExecutor(num_workers=1, workers=kind, in_flight=depth, units_per_call=per_call) as ex:
            runs = [_timed(model, x, ex, **kw) for _ in range(repeats + 1)][1:]
        t_ray = statistics.median(r[0] for r in runs)
        assert all(_same(base[0][1], r[1]) for r in runs), kind
        out[f"{kind}/{depth}/{per_call}"] = {"wall_s": t_ray, "overhead_ms_per_unit": 1000 * (t_ray - t_in) / units}
    return out


def _images(model: Any, images: int, data_root: str) -> torch.Tensor:
    """The first MNIST test images, 2×2 average-pooled to 14×14 for a 14×14 model."""
    x = l0tre.load_data("mnist:test", data_root=data_root, limit=images).x  # type: ignore[arg-type]
    if model.input_shape is not None and tuple(model.input_shape[1:]) == (14, 14):
        x = nn.functional.avg_pool2d(x, 2)
    return x


def scaling(model_name: str, images: int, t_max: int, epsilon: float, repeats: int,
            data_root: str, mode: str) -> dict[str, Any]:
    """In-process (1 thread) vs 2 Ray workers (1 thread each) on a t = 2 evaluation."""
    model = l0tre.load_model(model_name)
    x = _images(model, images, data_root)
    kw = {"epsilon": epsilon, "t_max": t_max, "mode": mode}
    runs_in = [_timed(model, x, InProcessExecutor(), sizes=(i == 0), **kw) for i in range(repeats + 1)]
    out: dict[str, Any] = {"mode": mode, "model": model_name, "images": images, "t_max": t_max, "epsilon": epsilon,
                           "units": runs_in[0][2].units, "shards": runs_in[0][2].calls,
                           "evaluations": runs_in[0][1].evaluations,
                           "run_part_bytes": runs_in[0][2].run_bytes,
                           "shard_part_bytes_max": max(runs_in[0][2].shard_bytes, default=0),
                           "in_process_s": [r[0] for r in runs_in[1:]],
                           "in_process_unit_work_s": [r[2].waited for r in runs_in[1:]]}
    with RayExecutor(num_workers=2) as ex:
        runs_ray = [_timed(model, x, ex, **kw) for _ in range(repeats + 1)]
    assert all(_same(runs_in[0][1], r[1]) for r in runs_ray), "Ray results differ"
    out["ray_2_workers_s"] = [r[0] for r in runs_ray[1:]]
    out["speedup"] = statistics.median(out["in_process_s"]) / statistics.median(out["ray_2_workers_s"])
    out["per_unit_ms_in_process"] = 1000 * statistics.median(out["in_process_s"]) / max(1, out["units"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="paper-sdnn")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--t-max", type=int, default=2)
    ap.add_argument("--epsilon", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--mode", default="eager",
                    help="execution mode of the scaling runs (default eager: 'auto' is chosen by timing, "
                         "which differs between runs on a busy machine)")
    ap.add_argument("--worker-niceness", type=int, default=0, help="niceness of the Ray workers (Ray's default: 15)")
    ap.add_argument("--data-root", default=os.environ.get("L0TRE_DATA", str(Path(__file__).resolve().parents[2]
                                                                          / "shared" / "data")))
    ap.add_argument("--json", type=Path, default=Path("ray_scaling.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("L0TRE_TUNING_CACHE", "off")
    # Ray starts its workers at niceness 15 (RAY_worker_niceness): on a machine shared with other
    # work they would get a smaller CPU share than the in-process run at 0; the same here
    os.environ.setdefault("RAY_worker_niceness", str(args.worker_niceness))
    folder = tempfile.mkdtemp(prefix="l0r", dir="/tmp")
    ray.init(num_cpus=2, _temp_dir=folder, include_dashboard=False, logging_level="ERROR")
    try:
        result: dict[str, Any] = {"cpus": os.cpu_count(), "ray": ray.__version__, "torch": torch.__version__,
                                  "worker_niceness": os.environ["RAY_worker_niceness"],
                                  "load_before": os.getloadavg()}
        if not args.skip_overhead:
            result["overhead"] = overhead(args.repeats)
        result["scaling"] = scaling(args.model, args.images, args.t_max, args.epsilon, args.repeats, args.data_root,
                                    args.mode)
        result["load_after"] = os.getloadavg()
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
    _table(result)
    atomic_write_text(args.json, json.dumps(result, indent=1))


def _table(r: dict[str, Any]) -> None:
    if "overhead" in r:
        o = r["overhead"]
        print(f"overhead: {o['units']} tiny units, in-process {o['in_process_s']:.2f} s "
              f"({o['in_process_ms_per_unit']:.2f} ms per unit)")
        for kind, depth, per_call in OVERHEAD_CASES:
            case = o[f"{kind}/{depth}/{per_call}"]
            print(f"  1 worker, {kind:6s} in_flight={depth} units_per_call={per_call}: {case['wall_s']:.2f} s -> "
                  f"{case['overhead_ms_per_unit']:.2f} ms per unit")
    s = r["scaling"]
    print(f"scaling: {s['model']}, {s['images']} images, t <= {s['t_max']}, {s['units']} units in {s['shards']} "
          f"shards, {s['evaluations']:,} evaluations")
    print(f"  in-process (1 thread): {', '.join(f'{v:.1f}' for v in s['in_process_s'])} s "
          f"(of which work units: {', '.join(f'{v:.1f}' for v in s['in_process_unit_work_s'])} s)")
    print(f"  Ray, 2 workers:        {', '.join(f'{v:.1f}' for v in s['ray_2_workers_s'])} s")
    print(f"  speed-up (medians):    {s['speedup']:.2f}x; per unit in-process {s['per_unit_ms_in_process']:.1f} ms")
    print(f"  object store: run part {s['run_part_bytes'] / 1e6:.2f} MB, largest shard part "
          f"{s['shard_part_bytes_max'] / 1e6:.2f} MB")
    print(f"  load average before/after: {r['load_before'][0]:.1f} / {r['load_after'][0]:.1f}")


if __name__ == "__main__":
    main()
