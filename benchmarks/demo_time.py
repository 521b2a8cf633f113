"""Benchmark: wall time of ``l0tre demo`` (target: well under 2 minutes on 2 CPU cores).

Runs ``python -m l0tre demo`` in a subprocess (a fresh interpreter, as a user would), with
``L0TRE_DATA`` removed from its environment, and prints one JSON object::

    python benchmarks/demo_time.py                 # demo into a temporary folder
    python benchmarks/demo_time.py --write bench.json --keep l0tre-demo

Exit code 0 when the demo succeeded within ``--target`` seconds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def run_demo(out: Path, extra: list[str]) -> dict[str, Any]:
    """Run the demo into ``out``; return wall time, exit code and the final global bounds."""
    env = dict(os.environ)
    env.pop("L0TRE_DATA", None)
    cmd = [sys.executable, "-m", "l0tre", "demo", "--out", str(out), "--quiet", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    record: dict[str, Any] = {
        "benchmark": "demo_time",
        "command": " ".join(cmd[1:]),
        "wall_seconds": round(wall, 2),
        "returncode": proc.returncode,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    results = out / "results.json"
    if results.is_file():
        data = json.loads(results.read_text())
        g = data["global"]
        record.update({
            "engine_seconds": round(float(g["seconds"]), 2),
            "evaluations": g["evaluations"],
            "evaluations_per_second": round(g["evaluations"] / g["seconds"]) if g["seconds"] else None,
            "t_completed": g["t"],
            "stopped": data.get("stopped"),
            "inputs": len(data["inputs"]),
            "global_lower": g["lower"],
            "global_upper": g["upper"],
            "estimate": g["estimate"],
            "radius": g["radius"],
            "time_budget": data["config"].get("time_budget"),
            "report": (out / "index.html").is_file(),
        })
    if proc.returncode != 0:
        record["stderr_tail"] = proc.stderr[-2000:]
    return record


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the demo once, print (and optionally write) the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="FILE", help="also write the JSON record to FILE")
    parser.add_argument("--keep", metavar="DIR", help="write the demo output to DIR (default: a temp folder)")
    parser.add_argument("--target", type=float, default=120.0, help="seconds the demo must stay under (default 120)")
    parser.add_argument("extra", nargs="*", help="extra `l0tre demo` options (after --)")
    args = parser.parse_args(argv)
    if args.keep:
        record = run_demo(Path(args.keep), args.extra)
    else:
        with tempfile.TemporaryDirectory(prefix="l0tre-demo-") as tmp:
            record = run_demo(Path(tmp) / "demo", args.extra)
    record["target_seconds"] = args.target
    record["ok"] = record["returncode"] == 0 and record["wall_seconds"] < args.target
    text = json.dumps(record, indent=1)
    print(text)
    if args.write:
        Path(args.write).write_text(text + "\n")
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
