"""Forward-mode linear bounds (:mod:`l0tre.certify.forward`) on their own.

Every node of a graph carries ``lw·e + lb ≤ z(x) ≤ uw·e + ub`` in the box's free coordinates
``e ∈ [-1, 1]^n``. These tests propagate the bounds node by node with the module's functions
(no windows, no final pass) and check them *pointwise* on many points of each box: the linear
bounds must hold at every point, not only their concretisation. A purely linear network is
represented exactly; bounds do not depend on the other boxes of a batch.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from _certify_helpers import conv_net, mlp, zoo
from torch import nn

from l0tre.certify import build_graph
from l0tre.certify import ops as O
from l0tre.certify.forward import LinBounds, affine_with_interval, concretize, input_bounds, propagate
from l0tre.certify.graph import Graph
from l0tre.certify.grouping import free_coordinates
from l0tre.certify.relax import interval, pool_relax, relu_relax

Interval = tuple[torch.Tensor, torch.Tensor]


def _propagate(graph: Graph, lo: torch.Tensor, hi: torch.Tensor, fused: bool = True
               ) -> tuple[dict[int, LinBounds], dict[int, Interval], torch.Tensor, torch.Tensor]:
    """Forward-mode bounds of every node; ``fused``: affine nodes through
    :func:`affine_with_interval`, else :func:`propagate` and IBP separately. Returns the
    bounds, the intervals (IBP ∩ concretised linear bounds), and ``free, valid``."""
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    free, valid = free_coordinates(lo, hi)
    lin: dict[int, LinBounds] = {0: input_bounds(centre, radius, free, valid)}
    box: dict[int, Interval] = {0: (lo, hi)}
    for i, node in enumerate(graph.nodes):
        op = node.op
        if op is None:
            continue
        ins = [box[j] for j in node.inputs]
        relax = None
        if isinstance(op, O.ReluOp):
            relax = relu_relax(*ins[0])
        elif isinstance(op, O.MaxPoolOp):
            relax = pool_relax(op, *ins[0])
        if fused and isinstance(op, O.AffineOp):
            lin[i], (ilo, ihi) = affine_with_interval(op, lin[node.inputs[0]], *ins[0])
        else:
            lin[i] = propagate(op, [lin[j] for j in node.inputs], relax)
            ilo, ihi = interval(op, ins)
        flo, fhi = concretize(lin[i])
        lo_i = torch.maximum(ilo, flo)
        box[i] = (lo_i, torch.maximum(torch.minimum(ihi, fhi), lo_i))
    return lin, box, free, valid


def _boxes(shape: tuple[int, int, int], b: int, seed: int, free: int | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """L0 boxes (``free`` or 1–3 pixels over [0, 1], all channels) and, without ``free``, small
    L∞ boxes in turn."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((b, *shape), generator=g, dtype=torch.float64)
    lo, hi = x0.clone(), x0.clone()
    c, h, w = shape
    for i in range(b):
        if free is not None or i % 2 == 0:
            pix = torch.randperm(h * w, generator=g)[: free if free is not None else 1 + i % 3]
            lo[i].view(c, -1)[:, pix] = 0.0
            hi[i].view(c, -1)[:, pix] = 1.0
        else:
            eps = 0.01 + 0.04 * (i % 3)
            lo[i], hi[i] = (x0[i] - eps).clamp(0, 1), (x0[i] + eps).clamp(0, 1)
    return lo, hi


def _points(lo: torch.Tensor, hi: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``(P, B, *shape)``: random points and random corners of each box."""
    g = torch.Generator().manual_seed(seed)
    pts = lo + (hi - lo) * torch.rand((n, *lo.shape), generator=g, dtype=lo.dtype)
    corners = torch.where(torch.rand((n, *lo.shape), generator=g) < 0.5, hi, lo)
    return torch.cat([pts, corners, ((lo + hi) / 2).unsqueeze(0)])


def _coords(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, free: torch.Tensor, valid: torch.Tensor
            ) -> torch.Tensor:
    """The free coordinates ``e`` ``(P, B, n)`` of points ``x`` ``(P, B, *shape)``."""
    c, r = ((lo + hi) / 2).flatten(1), ((hi - lo) / 2).flatten(1)
    idx = free.unsqueeze(0).expand(x.shape[0], *free.shape)
    num = x.flatten(2).gather(2, idx) - c.gather(1, free)
    den = r.gather(1, free).clamp_min(1e-300)
    return torch.where(valid, num / den, torch.zeros_like(num))


def _evaluate(lin: LinBounds, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``lw·e + lb`` and ``uw·e + ub`` ``(P, B, *shape)``."""
    p, b, n = e.shape
    view = (p, b, n) + (1,) * (lin.lb.dim() - 1)
    low = (lin.lw.unsqueeze(0) * e.view(view)).sum(2) + lin.lb
    up = (lin.uw.unsqueeze(0) * e.view(view)).sum(2) + lin.ub
    return low, up


def _values(graph: Graph, x: torch.Tensor) -> dict[int, torch.Tensor]:
    p, b = x.shape[:2]
    acts = graph.activations(x.flatten(0, 1), set(range(len(graph.nodes))))
    return {i: v.view(p, b, *v.shape[1:]) for i, v in acts.items()}


_MODELS = {
    "mlp": lambda: (mlp(3, (1, 3, 3), hidden=(8, 6)), (1, 3, 3)),
    "conv_pool": lambda: (conv_net(4), (1, 4, 4)),
    **{name: (lambda name=name: zoo()[name][:2]) for name in ("bn_pool", "pool_pad_ceil", "resnet", "functional")},
}


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name", sorted(_MODELS))
def test_linear_bounds_hold_pointwise_at_every_node(name: str, fused: bool) -> None:
    model, shape = _MODELS[name]()
    graph = build_graph(model, shape)
    lo, hi = _boxes(shape, 6, seed=len(name))
    lin, box, free, valid = _propagate(graph, lo, hi, fused)
    x = _points(lo, hi, 150, seed=1)
    e = _coords(x, lo, hi, free, valid)
    assert bool((e.abs() <= 1 + 1e-12).all())
    for i, z in _values(graph, x).items():
        low, up = _evaluate(lin[i], e)
        assert bool((low <= z + 1e-9).all()), (name, i, float((low - z).max()))
        assert bool((z <= up + 1e-9).all()), (name, i, float((z - up).max()))
        assert bool((box[i][0] <= z.amin(0) + 1e-9).all() and (z.amax(0) <= box[i][1] + 1e-9).all())


@pytest.mark.parametrize("name", sorted(_MODELS))
def test_fused_affine_step_equals_the_separate_ones(name: str) -> None:
    """``affine_with_interval`` gives the linear bounds of ``propagate`` and IBP's interval."""
    model, shape = _MODELS[name]()
    graph = build_graph(model, shape)
    lo, hi = _boxes(shape, 4, seed=2)
    fused, box_f, _, _ = _propagate(graph, lo, hi, fused=True)
    plain, box_p, _, _ = _propagate(graph, lo, hi, fused=False)
    for i in fused:
        for a, b in ((fused[i].lw, plain[i].lw), (fused[i].lb, plain[i].lb), (fused[i].uw, plain[i].uw),
                     (fused[i].ub, plain[i].ub), (box_f[i][0], box_p[i][0]), (box_f[i][1], box_p[i][1])):
            assert torch.allclose(a, b, atol=1e-10, rtol=1e-10), (name, i)


def _linear_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 2, padding=1), nn.BatchNorm2d(3), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(12, 5), nn.Linear(5, 4)).double().eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_network_is_represented_exactly(seed: int) -> None:
    """No non-linearity: lower and upper bounds coincide, equal the network at every point,
    and their concretisation is the exact range (checked on every corner of the box)."""
    model = _linear_net(seed)
    shape = (2, 3, 3)
    graph = build_graph(model, shape)
    lo, hi = _boxes(shape, 5, seed=seed, free=2)  # 2 pixels × 2 channels: 16 corners
    lin, _, free, valid = _propagate(graph, lo, hi)
    out = lin[graph.output]
    assert out.exact
    x = _points(lo, hi, 50, seed=seed)
    low, up = _evaluate(out, _coords(x, lo, hi, free, valid))
    with torch.no_grad():
        z = model(x.flatten(0, 1)).view(x.shape[0], x.shape[1], -1)
    assert torch.allclose(low, z, atol=1e-12) and torch.equal(low, up)
    flo, fhi = concretize(out)
    n = free.shape[1]
    bits = torch.tensor(list(itertools.product((0.0, 1.0), repeat=n)), dtype=torch.float64)  # (2^n, n)
    corners = lo.flatten(1).unsqueeze(0).repeat(bits.shape[0], 1, 1)
    span = (hi - lo).flatten(1).gather(1, free)
    vals = lo.flatten(1).gather(1, free).unsqueeze(0) + bits.unsqueeze(1) * span.unsqueeze(0)
    corners.scatter_(2, free.unsqueeze(0).expand_as(vals), vals)
    with torch.no_grad():
        zc = model(corners.view(-1, *shape)).view(bits.shape[0], lo.shape[0], -1)
    assert torch.allclose(flo, zc.amin(0), atol=1e-12) and torch.allclose(fhi, zc.amax(0), atol=1e-12)


@pytest.mark.parametrize("name", ["conv_pool", "resnet", "bn_pool"])
def test_bounds_of_a_box_do_not_depend_on_the_batch(name: str) -> None:
    """Each box's intervals are the same in a batch, alone, and in another order."""
    model, shape = _MODELS[name]()
    graph = build_graph(model, shape)
    lo, hi = _boxes(shape, 6, seed=5, free=2)  # the same number of free coordinates: equal shapes
    _, box, _, _ = _propagate(graph, lo, hi)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    _, box_perm, _, _ = _propagate(graph, lo[perm], hi[perm])
    for k in range(6):
        _, alone, _, _ = _propagate(graph, lo[k:k + 1], hi[k:k + 1])
        for i in box:
            assert torch.allclose(alone[i][0][0], box[i][0][k], atol=1e-12, rtol=0)
            assert torch.allclose(alone[i][1][0], box[i][1][k], atol=1e-12, rtol=0)
    for i in box:
        assert torch.allclose(box_perm[i][0], box[i][0][perm], atol=1e-12, rtol=0)


def test_input_bounds_ignore_padding_entries() -> None:
    """Boxes with fewer free coordinates than the batch's widest get zero weights on the
    padding entries, and the input bounds are the box itself."""
    lo = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    hi = lo.clone()
    hi[0, 0, 0, 0] = hi[0, 0, 1, 1] = hi[1, 0, 0, 1] = 1.0  # two free coordinates, then one
    free, valid = free_coordinates(lo, hi)
    assert valid.tolist() == [[True, True], [True, False]]
    lin = input_bounds((lo + hi) / 2, (hi - lo) / 2, free, valid)
    assert lin.exact and float(lin.lw[1, 1].abs().sum()) == 0.0
    flo, fhi = concretize(lin)
    assert torch.equal(flo, lo) and torch.equal(fhi, hi)
