"""Translation classes of cone bounds (used by ``benchmarks/coverage_relu5_layerwise.py``): in a
stride-1, zero-padded conv net, elements whose receptive field lies inside the image pose the same
problem — equal cone digests, equal CROWN and LP bounds, and intermediate bounds that depend only
on the channel — while a border element is a different problem; checked against direct
per-position computation."""

from __future__ import annotations

import torch

from l0tre.apps.coverage.cone import build_cone, cone_bounds
from l0tre.apps.coverage.cone_lp import lp_upper
from l0tre.apps.coverage.neurons import Neurons
from l0tre.certify.target import resolve

from .test_coverage_cone import _Res

H = W = 10  # radius of the third conv's pre-activation: 3, so rows / columns 3…6 are interior


def _setup(seed: int):  # type: ignore[no-untyped-def]
    graph = resolve(_Res(seed, side=H).double(), (1, H, W), dtype=torch.float64).graph
    layers = Neurons.discover(graph, "element").layers
    return graph, layers[-1].pre, layers


def test_interior_positions_share_bounds_and_borders_differ() -> None:
    for seed in range(3):
        graph, node, _ = _setup(seed)
        results = {}
        for c in range(2):
            for pos in [(3, 3), (4, 6), (6, 5), (0, 0), (3, 0)]:
                cone = build_cone(graph, node, torch.tensor([c * H * W + pos[0] * W + pos[1]]))
                up, pre = cone_bounds(cone, (0.0, 1.0))
                lp = lp_upper(cone, (0.0, 1.0), pre)
                results[c, pos] = (cone.key(), float(up[0]), lp)
            interior = [results[c, p] for p in [(3, 3), (4, 6), (6, 5)]]
            assert all(r[0] == interior[0][0] for r in interior)
            for r in interior[1:]:  # same problem: same bounds up to float64 summation order
                assert abs(r[1] - interior[0][1]) <= 1e-9 * (1 + abs(r[1]))
                assert abs(r[2] - interior[0][2]) <= 1e-7 * (1 + abs(r[2]))
            assert results[c, (0, 0)][0] != interior[0][0]
            assert results[c, (3, 0)][0] != interior[0][0]


def test_interior_intermediate_bounds_depend_only_on_the_channel() -> None:
    """What the layer-wise benchmark assumes: inside an interior cone every ReLU input's bounds
    are the same at every position of one channel (direct per-position computation)."""
    graph, node, _ = _setup(7)
    cone = build_cone(graph, node, torch.tensor([1 * H * W + 5 * W + 4]))
    _, pre = cone_bounds(cone, (0.0, 1.0))
    for j, (lo, up) in pre.items():
        sup = cone.nodes[j].support
        ch = sup // (H * W)
        for c in torch.unique(ch).tolist():
            sel = ch == c
            # per-position: the single element's own cone gives the same bound
            elem = int(sup[sel][0])
            own_up, _ = cone_bounds(build_cone(graph, j, torch.tensor([elem])), (0.0, 1.0))
            assert torch.allclose(up[sel], up[sel][0].expand(int(sel.sum())), rtol=1e-9, atol=1e-9)
            assert torch.allclose(lo[sel], lo[sel][0].expand(int(sel.sum())), rtol=1e-9, atol=1e-9)
            assert float(up[sel][0]) <= float(own_up[0]) + 1e-9
