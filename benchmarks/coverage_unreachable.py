"""Backward (CROWN) upper bounds of chosen coverage neurons over the whole input box.

Usage (the three cifar10-resnet20 channels no search fires, issue 17)::

    L0TRE_DATA=/path/to/shared/data OMP_NUM_THREADS=1 python benchmarks/coverage_unreachable.py \\
        --model cifar10-resnet20 --neurons channel --names 'relu_5[11],relu_15[59],relu_17[31]' \\
        --intermediate ibp --time-limit 900

Prints, per neuron, the largest upper bound of its pre-activation elements, the bound of its
value (channel mean of ``max(u, 0)``), whether it is proven unreachable, and seconds.

With ``--cone 'h,w;h,w'``, bounds single elements of each (channel) neuron on their cone
(:mod:`l0tre.apps.coverage.cone`: CROWN with CROWN intermediates on the receptive field), and
with ``--lp`` also by the LP relaxation of the cone (:mod:`l0tre.apps.coverage.cone_lp`)::

    python benchmarks/coverage_unreachable.py --names 'relu_5[11]' --cone '0,0;16,16' --lp
"""

from __future__ import annotations

import argparse
import re
import time

import torch

import l0tre
from l0tre.apps.coverage.core import proof_graph
from l0tre.apps.coverage.neurons import Neurons
from l0tre.apps.coverage.proofs import ProofSettings, tighten_unreachable


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cifar10-resnet20")
    p.add_argument("--neurons", default="channel")
    p.add_argument("--names", default="", help="comma-separated layer[index] names")
    p.add_argument("--names-file", default=None, help="more names, one per line")
    p.add_argument("--intermediate", default="ibp", choices=["ibp", "crown"])
    p.add_argument("--time-limit", type=float, default=900.0)
    p.add_argument("--cone", default="", help="element positions 'h,w;h,w' to bound on their cone")
    p.add_argument("--lp", action="store_true", help="with --cone, also the LP of the cone")
    p.add_argument("--exact", type=float, default=0.0,
                   help="with --neurons element: the exact maximum of each named element by the MILP of its cone, "
                        "with this time limit (s) per element")
    args = p.parse_args()
    torch.set_num_threads(1)
    clf = l0tre.load_model(args.model)
    shape = {"cifar10-resnet20": (3, 32, 32)}.get(args.model, (1, 28, 28))
    from l0tre.certify.target import resolve

    graph = resolve(clf, shape, dtype=clf.dtype).graph
    found = Neurons.discover(graph, args.neurons)
    proof = proof_graph(clf, found)
    names = re.findall(r"[^,\[\]]+\[[^\]]*\]", args.names)  # commas inside [...] belong to a name
    if args.names_file:
        names += [line.strip() for line in open(args.names_file) if line.strip()]
    for name in names:
        col = next(i for i in range(found.total) if found.describe(i) == name)
        if args.cone:
            _cone(proof, found, col, name, args.cone, args.lp, clf.bounds)
            continue
        if args.exact > 0:
            _exact(proof, found, col, name, args.exact, clf.bounds)
            continue
        start = time.monotonic()
        res = tighten_unreachable(proof, found, torch.tensor([col]), 0.0, clf.bounds,
                                  ProofSettings(intermediate=args.intermediate, time_limit=args.time_limit))
        print(f"{name}: value <= {float(res.upper[0]):.4g}, proven unreachable: {bool(res.proven[0])}, "
              f"{time.monotonic() - start:.1f} s", flush=True)


def _cone(graph: object, found: Neurons, col: int, name: str, spec: str, lp: bool,
          bounds: tuple[float, float]) -> None:
    """Cone bounds of single elements of channel neuron ``col``."""
    from l0tre.apps.coverage.cone import build_cone, cone_bounds
    from l0tre.apps.coverage.cone_lp import lp_upper

    layer = found.layers[int(found.layer_of(torch.tensor([col])))]
    c, (_, h, w) = col - layer.offset, layer.shape
    for item in spec.split(";"):
        i, j = (int(v) for v in item.split(","))
        start = time.monotonic()
        cone = build_cone(graph, layer.pre, torch.tensor([c * h * w + i * w + j]))  # type: ignore[arg-type]
        u, pre = cone_bounds(cone, bounds)
        line = f"{name} element ({i},{j}): cone CROWN <= {float(u[0]):.4g} ({time.monotonic() - start:.1f} s)"
        if lp:
            start = time.monotonic()
            bound = lp_upper(cone, bounds, pre, time_limit=600.0)
            line += f", cone LP <= {bound:.4g} ({time.monotonic() - start:.1f} s)"
        print(line, flush=True)


_SEEN: dict[bytes, tuple[float, float]] = {}


def _exact(graph: object, found: Neurons, col: int, name: str, limit: float, bounds: tuple[float, float]) -> None:
    """Cone CROWN and the MILP (exact maximum, dual bound) of element neuron ``col``."""
    from l0tre.apps.coverage.cone import build_cone, cone_bounds
    from l0tre.apps.coverage.cone_lp import lp_upper

    layer = found.layers[int(found.layer_of(torch.tensor([col])))]
    start = time.monotonic()
    cone = build_cone(graph, layer.pre, torch.tensor([col - layer.offset]))  # type: ignore[arg-type]
    key = cone.key()  # translates of one cone (same matrices) have the same maximum
    if key not in _SEEN:
        u, pre = cone_bounds(cone, bounds)
        _SEEN[key] = (float(u[0]), lp_upper(cone, bounds, pre, exact=True, time_limit=limit))
    crown, exact = _SEEN[key]
    verdict = "proven unreachable" if exact + 1e-6 <= 0 else "not proven (bound > 0)"
    print(f"{name}: cone CROWN <= {crown:.4g}, MILP max <= {exact:.4g}: {verdict} "
          f"({time.monotonic() - start:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
