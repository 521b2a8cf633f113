"""Check certified levels from outside the certificate code: search for t-pixel flips.

For each image of an sDNN stand-in (``mnist14.sdnn``), evaluates the float32 classifier on
(1) a value grid ``{0, 1/2, 1}^t`` over a seeded sample of the *connected* t-subsets (the pixel
subsets whose changes meet in a ReLU, which the certificate bounds jointly; t = 2: close pairs)
and (2) seeded random t-subsets with uniform random values. A certified image must show no flip;
a falsified one usually shows some (so the check can fail). Prints a table and writes JSON.

    cd benchmarks && L0TRE_DATA=../../shared/data ../.venv/bin/python certify_crosscheck.py \\
        --size 28 --t 3 --images 0,1,2,3 --connected 10000 --random 100000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mnist14
import torch

from l0tre.certify.separable import feature_overlaps
from l0tre.certify.target import resolve
from l0tre.certify.triples import connected_triples


def close_subsets(overlaps: torch.Tensor, t: int) -> torch.Tensor:
    """``(S, t)`` connected t-subsets (t = 2: overlapping pairs; t = 3: connected triples)."""
    if t == 2:
        i, j = torch.triu(overlaps, diagonal=1).nonzero(as_tuple=True)
        return torch.stack([i, j], 1)
    if t == 3:
        return connected_triples(overlaps)
    raise SystemExit("--t: 2 or 3")


def margins(clf: object, x0: torch.Tensor, label: int, subsets: torch.Tensor, values: torch.Tensor,
            batch: int = 512) -> torch.Tensor:
    """Margins ``(R,)`` (label score minus the best other score; < 0: the label flips) of the
    float32 classifier ``clf`` (an :class:`l0tre.Classifier`) on ``x0`` ``(1, H, W)`` with the
    pixels ``subsets`` ``(R, t)`` set to ``values`` ``(R, t)``."""
    out = []
    hw = x0.shape[-1] * x0.shape[-2]
    for s in range(0, subsets.shape[0], batch):
        sub, val = subsets[s:s + batch], values[s:s + batch]
        x = x0.reshape(1, hw).repeat(sub.shape[0], 1)
        x.scatter_(1, sub, val)
        z = clf(x.view(-1, *x0.shape))  # type: ignore[operator]
        other = z.clone()
        other[:, label] = float("-inf")
        out.append(z[:, label] - other.max(1).values)
    return torch.cat(out) if out else torch.zeros(0)


def flips(clf: object, x0: torch.Tensor, label: int, subsets: torch.Tensor, values: torch.Tensor) -> int:
    """How many of the rows of :func:`margins` change the label."""
    return int((margins(clf, x0, label, subsets, values) < 0).sum())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, choices=(14, 28), default=28)
    p.add_argument("--t", type=int, choices=(2, 3), default=3)
    p.add_argument("--images", default="0")
    p.add_argument("--connected", type=int, default=10_000, help="connected subsets on the value grid")
    p.add_argument("--random", type=int, default=100_000, help="random (subset, values) samples")
    p.add_argument("--top", type=int, default=30, help="strongest single pixels whose t-subsets are searched")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json-out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    idx = [int(v) for v in args.images.split(",")]
    clf = mnist14.sdnn(args.size)
    clf.set_mode(channels_last=True)  # same function, faster on this CPU
    ds = mnist14.images(args.size, "test", start=0, limit=max(idx) + 1)
    if ds.y is None:
        raise SystemExit("the MNIST test labels are needed")
    ov = feature_overlaps(resolve(clf, (1, args.size, args.size), dtype=torch.float64))
    if ov is None:
        raise SystemExit("no overlap structure for this model")
    close = close_subsets(ov, args.t)
    t, n = args.t, args.size * args.size
    levels = torch.tensor([0.0, 0.5, 1.0])
    grid = torch.cartesian_prod(*[levels] * t).view(-1, t)  # (3^t, t)
    rows = []
    print(f"{'image':>5} {'label':>5} {'pred':>4} | {'connected':>9} {'grid rows':>10} {'flips':>6} | "
          f"{'random rows':>11} {'flips':>6} | {'top rows':>8} {'flips':>6} {'sec':>6}")
    for i in idx:
        t0 = time.perf_counter()
        x0, y = ds.x[i], int(ds.y[i])
        pred = int(clf(x0.unsqueeze(0)).argmax(1))
        g = torch.Generator().manual_seed(args.seed + i)
        pick = torch.randperm(close.shape[0], generator=g)[: args.connected]
        sub = close[pick].repeat_interleave(grid.shape[0], 0)
        val = grid.repeat(pick.shape[0], 1)
        grid_flips = flips(clf, x0, pred, sub, val)
        rand_flips = 0
        for s in range(0, args.random, 16384):  # distinct pixels per row, in chunks (memory)
            m = min(16384, args.random - s)
            rsub = torch.rand(m, n, generator=g).topk(t, dim=1).indices
            rand_flips += flips(clf, x0, pred, rsub, torch.rand(m, t, generator=g))
        # (3) the strongest single pixels, all their t-subsets on the grid
        singles = torch.arange(n).repeat_interleave(levels.numel()).view(-1, 1)
        best = margins(clf, x0, pred, singles, levels.repeat(n).view(-1, 1)).view(n, -1).min(1).values
        top = best.argsort()[: args.top]
        tsub = torch.combinations(top, t)
        tsub_rows = tsub.repeat_interleave(grid.shape[0], 0)
        top_flips = flips(clf, x0, pred, tsub_rows, grid.repeat(tsub.shape[0], 1))
        sec = time.perf_counter() - t0
        rows.append({"index": i, "label": y, "pred": pred, "connected_subsets": int(pick.shape[0]),
                     "grid_rows": int(sub.shape[0]), "grid_flips": grid_flips, "random_rows": args.random,
                     "random_flips": rand_flips, "top_pixels": args.top, "top_rows": int(tsub_rows.shape[0]),
                     "top_flips": top_flips, "seconds": sec})
        print(f"{i:>5} {y:>5} {pred:>4} | {pick.shape[0]:>9} {sub.shape[0]:>10} {grid_flips:>6} | "
              f"{args.random:>11} {rand_flips:>6} | {tsub_rows.shape[0]:>8} {top_flips:>6} {sec:>6.1f}", flush=True)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({"config": vars(args) | {"json_out": str(args.json_out)},
                                             "torch": torch.__version__,
                                             "model_fingerprint": clf.fingerprint(), "images": rows}, indent=1))
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
