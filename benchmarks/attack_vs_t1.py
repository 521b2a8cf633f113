"""Issue 20's TRADES target: the attack's L0 ≤ the engine's t = 1 upper bound + 1 on every image.

Reads the per-image L0 that ``attack_pair_timing.py`` or ``attack_compare.py`` recorded (``--json``;
for the latter, the ``--workload`` entry), re-selects the same images (the workload's first
``--limit`` test images, the correctly classified ones, in order),
runs ``l0tre.evaluate(..., t_max=1)`` on them and compares per image: the engine's t = 1 example
has ``upper + 1`` changed pixels where it found one.

    L0TRE_DATA=../shared/data OMP_NUM_THREADS=1 .venv/bin/python benchmarks/attack_vs_t1.py \\
        --json benchmarks/results/attack_pair_issue20_r2_trades.json

Prints a table; exits 1 when some image breaks the target.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attack_compare as ac  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, required=True, help="attack_pair_timing.py or attack_compare.py output")
    ap.add_argument("--workload", default="trades", help="the workload read from an attack_compare.py file")
    ap.add_argument("--method", default="l0tre", help="the method whose L0 is checked")
    ap.add_argument("--epsilon", type=float, default=0.5)
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args(argv)
    l0, workload, limit, start = _read_l0(args)
    spec = ac.WORKLOADS[workload]
    import l0tre

    clf = l0tre.load_model(spec["model"], data_root=args.data_root)
    data = l0tre.load_data(spec["data"], data_root=args.data_root, limit=limit or spec["default_limit"], start=start)
    if data.y is None:
        raise ValueError(f"{spec['data']}: labels are needed")
    keep = clf.predict(data.x) == data.y
    x = data.x[keep]
    if x.shape[0] != len(l0):
        raise ValueError(f"--json: expected {x.shape[0]} per-image L0 for these images, got {len(l0)}")
    res = l0tre.evaluate(clf, x, epsilon=args.epsilon, t_max=1, show_progress=False)
    found = res.found
    rows: list[tuple[int, int | None, int | None, bool]] = []
    for i, (attack, up, f) in enumerate(zip(l0, res.upper.tolist(), found.tolist(), strict=True)):
        engine = int(up) + 1 if f else None
        rows.append((i, attack, engine, attack is not None and (engine is None or attack <= engine)))
    bad = [r for r in rows if not r[3]]
    with_engine = [r for r in rows if r[2] is not None]
    print(f"{len(rows)} images; engine t = 1 example on {len(with_engine)}; "
          f"mean L0 {args.method} {sum(r[1] for r in rows if r[1] is not None) / len(rows):.2f}, "
          f"engine t = 1 (where found) {sum(r[2] for r in with_engine) / max(1, len(with_engine)):.2f}")
    print(f"{args.method} L0 <= engine t = 1 example (upper + 1) on {len(rows) - len(bad)} of {len(rows)} images")
    for i, attack, engine, _ in bad:
        print(f"  image {i}: {args.method} {attack}, engine t = 1 example {engine}")
    return 1 if bad else 0


def _read_l0(args: argparse.Namespace) -> tuple[list[int | None], str, int | None, int]:
    """Per-image L0 of ``args.method`` (``None`` where it failed), workload, ``--limit``, ``--start``."""
    run = json.loads(args.json.read_text())
    if "workloads" in run:  # attack_compare.py
        if args.workload not in run["workloads"]:
            raise ValueError(f"--workload: {args.json} has {sorted(run['workloads'])}, got {args.workload!r}")
        w = run["workloads"][args.workload]
        r = w["methods"][args.method]
        if r["attempted"] != w["n_correct"]:
            raise ValueError(f"--method: {args.method} attacked {r['attempted']} of {w['n_correct']} images")
        return [v if ok else None for v, ok in zip(r["l0"], r["success"], strict=True)], args.workload, w["limit"], 0
    l0 = [v for pair in run["pairs"] if pair["round"] == 0 for v in pair[args.method]["l0"]]
    cmd = run["command"].split()
    limit = int(cmd[cmd.index("--limit") + 1]) if "--limit" in cmd else None
    start = int(cmd[cmd.index("--start") + 1]) if "--start" in cmd else 0
    return l0, run["workload"], limit, start


if __name__ == "__main__":
    raise SystemExit(main())
