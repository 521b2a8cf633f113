"""Layer-wise LP bounds of the cone of `relu_5[11]` at the centre (16, 16) of cifar10-resnet20.

Issue 17 (helper h17): every element in the cone of the centre element lies in the image
interior (receptive-field radius ≤ 6 around rows/columns 10…22), so the bounds of each
pre-activation node are equal for all positions of one channel (translates of one cone with the
same per-channel bounds). Per node in order (``relu``…``relu_4`` pre-activations: graph nodes
3, 6, 10, 13, 17), per channel, the LP (triangle) relaxation of one element's cone
(:func:`l0tre.apps.coverage.cone_lp.lp_upper`, both directions) with the earlier nodes'
per-channel bounds, intersected with cone CROWN; then the LP of the target. Sound up to the LP
solver's tolerances (a diagnostic, not a proof step: nothing here marks a neuron unreachable).

Usage::

    L0TRE_DATA=/path/to/shared/data OMP_NUM_THREADS=1 python benchmarks/coverage_relu5_layerwise.py 60
"""

from __future__ import annotations

import sys
import time

import torch

import l0tre
from l0tre.apps.coverage.cone import Cone, build_cone, cone_bounds
from l0tre.apps.coverage.cone_lp import lp_upper
from l0tre.apps.coverage.core import proof_graph
from l0tre.apps.coverage.neurons import Neurons
from l0tre.certify.target import resolve

HW, CENTRE = 1024, 16 * 32 + 16
PRES = [3, 6, 10, 13, 17]
Bounds = dict[int, tuple[torch.Tensor, torch.Tensor]]


def _pre(cone: Cone, chb: Bounds) -> Bounds:
    """Per-channel bounds broadcast over each ReLU input's support."""
    pre = {}
    for nd in cone.nodes.values():
        if nd.kind == "relu":
            j = nd.inputs[0]
            ch = cone.nodes[j].support // HW
            pre[j] = (chb[j][0][ch].clone(), chb[j][1][ch].clone())
    return pre


def main() -> None:
    limit = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    torch.set_num_threads(1)
    clf = l0tre.load_model("cifar10-resnet20")
    graph = resolve(clf, (3, 32, 32), dtype=clf.dtype).graph
    g = proof_graph(clf, Neurons.discover(graph, "element"))
    chb: Bounds = {}
    one = torch.tensor([1.0], dtype=torch.float64)
    for t in [*PRES, 20]:
        low, up = torch.zeros(16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64)
        t0 = time.monotonic()
        for c in range(16) if t != 20 else [11]:
            cone = build_cone(g, t, torch.tensor([c * HW + CENTRE]))
            cu, cpre = cone_bounds(cone, clf.bounds)
            pre = {j: (torch.maximum(v[0], cpre[j][0]), torch.minimum(v[1], cpre[j][1]))
                   for j, v in _pre(cone, chb).items()}
            u = lp_upper(cone, clf.bounds, pre, objective=one, time_limit=limit)
            if t == 20:
                print(f"relu_5[11] centre: cone CROWN {float(cu[0]):.4g}, LP {u:.4g}", flush=True)
                break
            low[c] = max(-lp_upper(cone, clf.bounds, pre, objective=-one, time_limit=limit), -1e9)
            up[c] = min(u, float(cu[0]))
        if t != 20:
            chb[t] = (low, up)
            print(f"node {t} ({time.monotonic() - t0:.1f} s): l {[round(float(v), 2) for v in low]} "
                  f"u {[round(float(v), 2) for v in up]}", flush=True)


if __name__ == "__main__":
    main()
