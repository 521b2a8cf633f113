"""Every bound holds on random and corner samples, for every method and model kind."""

from __future__ import annotations

import itertools
import tempfile
import zlib
from pathlib import Path

import pytest
import torch
from _certify_helpers import zoo

from l0tre.certify import bound_model, build_graph
from l0tre.certify.bounds import BoundOptions, free_coordinates, lower_bounds

_VARIANTS = [("ibp", "ibp"), ("forward", "forward"), ("crown", "ibp"), ("crown", "forward"),
             ("crown", "crown"), ("forward", "crown"), ("hybrid", "auto")]


def _boxes(shape: tuple[int, int, int], b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A mix of L0-style boxes (a few pixels free over [0, 1]) and small L∞ boxes."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((b, *shape), generator=g, dtype=torch.float64)
    lo, hi = x0.clone(), x0.clone()
    c, h, w = shape
    for i in range(b):
        if i % 2 == 0:
            k = 1 + i % 3
            pix = torch.randperm(h * w, generator=g)[:k]
            lo[i].view(c, -1)[:, pix] = 0.0
            hi[i].view(c, -1)[:, pix] = 1.0
        else:
            eps = 0.02 + 0.05 * (i % 3)
            lo[i] = (x0[i] - eps).clamp(0, 1)
            hi[i] = (x0[i] + eps).clamp(0, 1)
    return lo, hi


def _samples(lo: torch.Tensor, hi: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Random points, all corners of the free coordinates (up to 2^6) and random corners:
    ``(P, B, *shape)``."""
    g = torch.Generator().manual_seed(seed)
    pts = [lo + (hi - lo) * torch.rand((n, *lo.shape), generator=g, dtype=lo.dtype)]
    free, valid = free_coordinates(lo, hi)
    m = min(free.shape[1], 6)
    for bits in itertools.product((0.0, 1.0), repeat=m):
        p = lo.clone().flatten(1)
        choice = torch.tensor(bits, dtype=lo.dtype).expand(lo.shape[0], m)
        sel = free[:, :m]
        vals = lo.flatten(1).gather(1, sel) + choice * (hi - lo).flatten(1).gather(1, sel)
        p.scatter_(1, sel, vals)
        pts.append(p.view_as(lo).unsqueeze(0))
    rc = torch.rand((n, *lo.shape), generator=g, dtype=lo.dtype) < 0.5
    pts.append(torch.where(rc, hi, lo))
    return torch.cat(pts)


@pytest.mark.parametrize("name", list(zoo()))
def test_bounds_hold_on_samples(name: str) -> None:
    model, shape, pre = zoo()[name]
    g = build_graph(model, shape, preprocessing=pre)
    seed = zlib.crc32(name.encode()) % 1000
    lo, hi = _boxes(shape, 8, seed=seed)
    pts = _samples(lo, hi, 200, seed=1)
    with torch.no_grad():
        out = g.forward(pts.flatten(0, 1)).view(pts.shape[0], lo.shape[0], -1)
    true_lo, true_hi = out.min(0).values, out.max(0).values
    widths = {}
    for method, inter in _VARIANTS:
        lb, ub = bound_model(g, lo, hi, method=method, intermediate=inter)
        for side, gap in (("lower", lb - true_lo), ("upper", true_hi - ub)):
            if bool((gap > 1e-9).any()):  # keep everything needed to reproduce a wrong bound
                box, out_idx = divmod(int(gap.flatten().argmax()), gap.shape[1])
                dump = Path(tempfile.gettempdir()) / f"l0tre-unsound-{name}-{method}-{inter}.pt"
                torch.save({"lo": lo, "hi": hi, "lb": lb, "ub": ub, "samples": pts, "seed": seed,
                            "torch": torch.__version__, "config": torch.__config__.show()}, dump)
                pytest.fail(f"{side} bound violated by {float(gap.max()):.3g} ({method}/{inter}, box seed {seed}, "
                            f"box {box}, output {out_idx}, bounds {float(lb[box, out_idx]):.6f}.."
                            f"{float(ub[box, out_idx]):.6f}, sampled {float(true_lo[box, out_idx]):.6f}.."
                            f"{float(true_hi[box, out_idx]):.6f}); saved {dump}")
        widths[(method, inter)] = float((ub - lb).mean())
    # CROWN is at least as tight as IBP on average (and the forward-intermediate variant too)
    assert widths[("crown", "forward")] <= widths[("ibp", "ibp")] + 1e-9
    assert widths[("crown", "crown")] <= widths[("ibp", "ibp")] + 1e-9


@pytest.mark.parametrize("name", ["conv_pool", "resnet", "bn_pool"])
def test_margin_bounds_hold(name: str) -> None:
    model, shape, pre = zoo()[name]
    g = build_graph(model, shape, preprocessing=pre)
    lo, hi = _boxes(shape, 6, seed=7)
    pts = _samples(lo, hi, 100, seed=2)
    labels = g.forward((lo + hi) / 2).argmax(1)
    with torch.no_grad():
        z = g.forward(pts.flatten(0, 1)).view(pts.shape[0], lo.shape[0], -1)
    true = (z.gather(2, labels.view(1, -1, 1).expand(pts.shape[0], -1, 1)) - z).min(0).values
    for method in ("ibp", "forward", "crown"):
        lb, ub = bound_model(g, lo, hi, labels=labels, method=method)
        assert bool((lb <= true + 1e-9).all())
        assert torch.allclose(lb.gather(1, labels.view(-1, 1)), torch.zeros(6, 1, dtype=lb.dtype))


def test_memory_chunking_gives_same_bounds() -> None:
    model, shape, _ = zoo()["bn_pool"]
    g = build_graph(model, shape)
    lo, hi = _boxes(shape, 6, seed=3)
    spec = torch.eye(3, dtype=torch.float64)
    for inter in ("crown", "forward"):
        big = lower_bounds(g, lo, hi, spec, BoundOptions(intermediate=inter))
        small = lower_bounds(g, lo, hi, spec, BoundOptions(intermediate=inter, max_memory=1))
        assert torch.allclose(big, small, atol=1e-9)


def test_point_boxes_are_exact() -> None:
    model, shape, pre = zoo()["resnet"]
    x = torch.rand(3, *shape, dtype=torch.float64)
    g = build_graph(model, shape, preprocessing=pre)
    for method in ("ibp", "forward", "crown"):
        lb, ub = bound_model(g, x, x, method=method)
        ref = g.forward(x)
        assert torch.allclose(lb, ref, atol=1e-9) and torch.allclose(ub, ref, atol=1e-9)


def test_bad_boxes_are_rejected() -> None:
    model, shape, _ = zoo()["mlp"]
    lo = torch.rand(2, *shape)
    with pytest.raises(ValueError):
        bound_model(model, lo, lo - 0.1)
    with pytest.raises(ValueError):
        bound_model(model, lo, lo, method="deeppoly-magic")
    with pytest.raises(ValueError):
        bound_model(model, lo[:, :, :2], lo[:, :, :2])


@pytest.mark.parametrize("name", list(zoo()))
def test_sweep_skips_only_the_unread_affine_tail(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep skips the affine nodes after the last non-linearity; every method gives
    exactly the bounds of a sweep that visits every node."""
    from l0tre.certify import ops as O
    from l0tre.certify import sweep as sweep_mod

    model, shape, pre = zoo()[name]
    g = build_graph(model, shape, preprocessing=pre)
    needed = sweep_mod._needed(g, set())
    assert g.output not in needed
    for i, node in enumerate(g.nodes):
        if isinstance(node.op, (O.ReluOp, O.MaxPoolOp)):
            assert g.ancestors(i) <= needed
    lo, hi = _boxes(shape, 6, seed=5)
    spec = torch.randn(4, g.output_shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fast = {v: lower_bounds(g, lo, hi, spec, BoundOptions(method=v[0], intermediate=v[1])) for v in _VARIANTS}
    monkeypatch.setattr(sweep_mod, "_needed", lambda graph, keep: set(range(len(graph.nodes))))
    for v, lb in fast.items():
        full = lower_bounds(g, lo, hi, spec, BoundOptions(method=v[0], intermediate=v[1]))
        assert torch.equal(lb, full), v
