"""Milliseconds per row: full forward vs the graph chain (``GraphPrefix``), one changed pixel per row.

Usage::

    L0TRE_DATA=/work/shared/data python benchmarks/graph_chain_rows.py resnet20 [--threads 1] [--json-out F]
    python benchmarks/graph_chain_rows.py r18 [--threads 1]   # ResNet-18-shaped, 224x224, random weights

Prints one line per (max_share, mode, chunk) and writes them as JSON with ``--json-out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import l0tre
from l0tre.execution.graph_chain import GraphPrefix

sys.path.insert(0, str(Path(__file__).parent))
from saliency_vs_captum import resnet_shaped  # noqa: E402

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _best(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=("resnet20", "r18"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json-out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.model == "resnet20":
        clf, shape, rows = l0tre.load_model("cifar10-resnet20"), (3, 32, 32), 256
    else:
        shape, rows = (3, 224, 224), 16
        clf = l0tre.Classifier(resnet_shaped("resnet18"), device="cpu", input_shape=shape, preprocessing=IMAGENET)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, *shape, generator=gen)
    a = torch.randint(0, 4, (rows,), generator=gen)
    pix = torch.randint(0, shape[1] * shape[2], (rows, 1), generator=gen)
    vals = torch.rand(rows, 1, shape[0], generator=gen)
    x = x0[a].clone()
    x.view(rows, shape[0], -1)[torch.arange(rows), :, pix[:, 0]] = vals[:, 0]
    out = []
    for share in (0.8, 0.95):
        g = GraphPrefix.trace(clf, shape, max_share=share)
        if g is None or g.program is None:
            raise SystemExit(f"{args.model}: no graph chain")
        caches = g.base(x0)
        for mode in ("eager", "channels_last"):
            clf.set_mode(channels_last=mode == "channels_last")
            full = _best(lambda: clf(x)) / rows * 1e3
            for chunk in (0, 64):
                g.chunk = chunk
                graph = _best(lambda g=g, c=caches: g.outputs(c, a, pix, vals)) / rows * 1e3
                r = {"model": args.model, "max_share": share, "mode": mode, "chunk": chunk, "steps": g.depth,
                     "convs": g.program.convs, "full_ms_per_row": full, "graph_ms_per_row": graph,
                     "ratio": full / graph}
                out.append(r)
                print(f"{args.model} share {share} {mode:13s} chunk {chunk:3d} convs {g.program.convs:2d} "
                      f"full {full:.3f} ms/row graph {graph:.3f} ms/row ratio {full / graph:.2f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"threads": args.threads, "rows": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
