"""Backward (CROWN / DeepPoly) bounds (:mod:`l0tre.certify.crown`) against independent truths.

* soundness: the lower bound of ``spec · f(x)`` is below its value at many points of every
  box (random points, random corners, the centre), for MLPs and small conv nets;
* exactness on networks that are affine over the box: a purely linear network, and a ReLU
  network on boxes small enough that no ReLU changes sign (the exact minimum of an affine map
  over a box is ``f(c) − |J| r``, with the Jacobian from autograd);
* never looser than IBP where that is a theorem (no unstable neuron), and not looser on
  average on ReLU nets: elementwise dominance does *not* hold in general (an unstable ReLU
  with the adaptive lower slope 1 can lose against IBP's 0 on a large box);
* batch invariance: a box's bound does not depend on the other boxes of its batch or their
  order, with shared and with per-box specifications.
"""

from __future__ import annotations

import pytest
import torch
from _certify_helpers import conv_net, mlp
from torch import nn

from l0tre.certify import build_graph
from l0tre.certify import ops as O
from l0tre.certify.bounds import BoundOptions, lower_bounds, margin_spec
from l0tre.certify.crown import BackwardContext, backward
from l0tre.certify.graph import Graph
from l0tre.certify.window import dense_plan

_INTERMEDIATE = ("ibp", "forward", "crown", "auto")


def _net(seed: int, kind: str) -> tuple[nn.Module, tuple[int, int, int]]:
    if kind == "mlp":
        return mlp(seed, (1, 4, 4), hidden=(10, 8), classes=4).double(), (1, 4, 4)
    if kind == "conv":
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(2, 3, 2), nn.ReLU(), nn.Conv2d(3, 2, 2, padding=1), nn.ReLU(), nn.Flatten(),
                              nn.Linear(32, 6), nn.ReLU(), nn.Linear(6, 4))
        return model.double().eval(), (2, 4, 4)
    return conv_net(seed).double(), (1, 4, 4)  # conv → ReLU → max-pool → dense


def _boxes(shape: tuple[int, int, int], b: int, seed: int, eps: float | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """L0 boxes (1–3 pixels free over [0, 1]) and L∞ boxes in turn; with ``eps`` L∞ boxes
    of that radius only."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((b, *shape), generator=g, dtype=torch.float64)
    lo, hi = x0.clone(), x0.clone()
    c, h, w = shape
    for i in range(b):
        if eps is not None or i % 2:
            r = eps if eps is not None else 0.02 + 0.08 * (i % 4)
            lo[i], hi[i] = x0[i] - r, x0[i] + r
        else:
            pix = torch.randperm(h * w, generator=g)[: 1 + i % 3]
            lo[i].view(c, -1)[:, pix] = 0.0
            hi[i].view(c, -1)[:, pix] = 1.0
    return lo, hi


def _samples(model: nn.Module, lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor, n: int, seed: int
             ) -> torch.Tensor:
    """``min spec · f(x)`` ``(B, M)`` over random points, random corners and the centre."""
    g = torch.Generator().manual_seed(seed)
    pts = [lo + (hi - lo) * torch.rand((n, *lo.shape), generator=g, dtype=lo.dtype),
           torch.where(torch.rand((n, *lo.shape), generator=g) < 0.5, hi, lo), ((lo + hi) / 2).unsqueeze(0)]
    x = torch.cat(pts)
    with torch.no_grad():
        z = model(x.flatten(0, 1)).view(x.shape[0], lo.shape[0], -1)  # (P, B, K)
    s = spec if spec.dim() == 3 else spec.expand(lo.shape[0], *spec.shape)
    return torch.einsum("bmk,pbk->pbm", s, z).amin(0)


def _affine_min(model: nn.Module, lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
    """``min spec · f`` over each box for ``f`` affine on the box: ``spec·f(c) − |spec·J(c)|·r``."""
    out = []
    for b in range(lo.shape[0]):
        c, r = (lo[b] + hi[b]) / 2, (hi[b] - lo[b]) / 2
        jac = torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0))[0], c)  # (K, *shape)
        a = spec @ jac.flatten(1)  # (M, n)
        with torch.no_grad():
            out.append(spec @ model(c.unsqueeze(0))[0] - a.abs() @ r.flatten())
    return torch.stack(out)


def _spec(k: int, m: int, seed: int) -> torch.Tensor:
    return torch.randn((m, k), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("intermediate", _INTERMEDIATE)
@pytest.mark.parametrize("kind", ["mlp", "conv", "conv_pool"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crown_bounds_hold_on_sampled_points(seed: int, kind: str, intermediate: str) -> None:
    model, shape = _net(seed, kind)
    graph = build_graph(model, shape)
    lo, hi = _boxes(shape, 8, seed=seed + 10)
    lo, hi = lo.clamp(0, 1), hi.clamp(0, 1)
    k = graph.output_shape[0]
    spec = _spec(k, 6, seed)
    lb = lower_bounds(graph, lo, hi, spec, BoundOptions("crown", intermediate))
    truth = _samples(model, lo, hi, spec, 300, seed)
    assert bool((lb <= truth + 1e-9).all()), float((lb - truth).max())
    labels = graph.forward((lo + hi) / 2).argmax(1)
    margins = margin_spec(labels, k)
    mlb = lower_bounds(graph, lo, hi, margins, BoundOptions("crown", intermediate))
    assert bool((mlb <= _samples(model, lo, hi, margins, 300, seed) + 1e-9).all())


def _linear(seed: int) -> tuple[nn.Module, tuple[int, int, int]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 3, 2, padding=1), nn.BatchNorm2d(3), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(12, 6), nn.Linear(6, 4))
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    return model.double().eval(), (2, 3, 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crown_is_exact_on_a_linear_network(seed: int) -> None:
    """No non-linearity: CROWN's bound is the exact minimum of the affine map over the box
    (and so is IBP's here: it folds the specification back through the whole affine tail)."""
    model, shape = _linear(seed)
    graph = build_graph(model, shape)
    lo, hi = _boxes(shape, 8, seed=seed)
    spec = _spec(4, 5, seed)
    exact = _affine_min(model, lo, hi, spec)
    crown = lower_bounds(graph, lo, hi, spec, BoundOptions("crown", "crown"))
    ibp = lower_bounds(graph, lo, hi, spec, BoundOptions("ibp", "ibp"))
    assert torch.allclose(crown, exact, atol=1e-10, rtol=1e-10)
    assert torch.allclose(ibp, exact, atol=1e-10, rtol=1e-10)


def test_backward_walk_alone_is_exact_on_a_linear_network() -> None:
    """:func:`backward` from the output to the input, without windows or relaxations, is
    ``spec·f(c) − |spec·J|·r``."""
    model, shape = _linear(3)
    graph = build_graph(model, shape)
    lo, hi = _boxes(shape, 4, seed=3)
    spec = _spec(4, 3, 3)
    ctx = BackwardContext(centre=(lo + hi) / 2, radius=(hi - lo) / 2)
    lb = backward(graph, dense_plan(graph), graph.output, spec.expand(4, *spec.shape).contiguous(), ctx)
    assert torch.allclose(lb, _affine_min(model, lo, hi, spec), atol=1e-10, rtol=1e-10)


def _stable(graph: Graph, lo: torch.Tensor, hi: torch.Tensor, margin: float) -> torch.Tensor:
    """``(B,)``: every ReLU input of the box's centre is at least ``margin`` away from 0."""
    inputs = {node.inputs[0] for node in graph.nodes if isinstance(node.op, O.ReluOp)}
    acts = graph.activations((lo + hi) / 2, inputs)
    ok = torch.ones(lo.shape[0], dtype=torch.bool)
    for i in inputs:
        ok &= (acts[i].abs().flatten(1) > margin).all(1)
    return ok


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_crown_exact_and_never_looser_than_ibp_where_no_relu_is_unstable(seed: int, kind: str) -> None:
    """On boxes of radius 1e-6 whose centre keeps every ReLU input 1e-3 away from zero the
    network is affine on the box: CROWN (with any intermediate bounds) is its exact minimum,
    hence never below IBP on any margin."""
    model, shape = _net(seed, kind)
    graph = build_graph(model, shape)
    lo, hi = _boxes(shape, 24, seed=seed, eps=1e-6)
    keep = _stable(graph, lo, hi, 1e-3)
    assert int(keep.sum()) >= 3  # not vacuous
    lo, hi = lo[keep], hi[keep]
    labels = graph.forward((lo + hi) / 2).argmax(1)
    spec = margin_spec(labels, 4)
    exact = torch.stack([_affine_min(model, lo[b:b + 1], hi[b:b + 1], spec[b])[0] for b in range(lo.shape[0])])
    ibp = lower_bounds(graph, lo, hi, spec, BoundOptions("ibp", "ibp"))
    for inter in _INTERMEDIATE:
        crown = lower_bounds(graph, lo, hi, spec, BoundOptions("crown", inter))
        assert torch.allclose(crown, exact, atol=1e-9, rtol=1e-9), inter
        assert bool((crown >= ibp - 1e-12).all()), inter


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_crown_not_looser_than_ibp_on_average(kind: str) -> None:
    """Over many L0 and L∞ boxes, CROWN's margin bounds on these ReLU nets are on average at
    least IBP's (and strictly better somewhere). Not a theorem: with max-pooling and wide
    boxes (``conv_pool``, radius up to 0.26) IBP is ahead on average."""
    for seed in range(3):
        model, shape = _net(seed, kind)
        graph = build_graph(model, shape)
        lo, hi = _boxes(shape, 16, seed=seed + 20)
        lo, hi = lo.clamp(0, 1), hi.clamp(0, 1)
        labels = graph.forward((lo + hi) / 2).argmax(1)
        spec = margin_spec(labels, graph.output_shape[0])
        ibp = lower_bounds(graph, lo, hi, spec, BoundOptions("ibp", "ibp"))
        for inter in ("crown", "auto"):
            crown = lower_bounds(graph, lo, hi, spec, BoundOptions("crown", inter))
            assert float(crown.mean()) >= float(ibp.mean())
            assert bool((crown > ibp + 1e-6).any())


@pytest.mark.parametrize("method", ["crown", "hybrid"])
@pytest.mark.parametrize("kind", ["mlp", "conv", "conv_pool"])
def test_crown_bounds_do_not_depend_on_the_batch(kind: str, method: str) -> None:
    """A box's bound is the same in its batch, alone, and with the batch permuted; with one
    specification for all boxes and with one per box."""
    model, shape = _net(4, kind)
    graph = build_graph(model, shape)
    lo, hi = _boxes(shape, 8, seed=4)
    lo, hi = lo.clamp(0, 1), hi.clamp(0, 1)
    k = graph.output_shape[0]
    shared = _spec(k, 3, 4)
    per_box = torch.randn((8, 3, k), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(6))
    for spec in (shared, per_box):
        opts = BoundOptions(method, "crown")
        batch = lower_bounds(graph, lo, hi, spec, opts)
        permuted = lower_bounds(graph, lo[perm], hi[perm], spec if spec.dim() == 2 else spec[perm], opts)
        assert torch.allclose(permuted, batch[perm], atol=1e-10, rtol=0)
        for b in range(8):
            one = lower_bounds(graph, lo[b:b + 1], hi[b:b + 1], spec if spec.dim() == 2 else spec[b:b + 1], opts)
            assert torch.allclose(one[0], batch[b], atol=1e-10, rtol=0)
