"""Spatial windows: identical bounds to the dense computation, and crop/uncrop adjointness."""

from __future__ import annotations

import pytest
import torch
from _certify_helpers import Normalised, TinyResNet, randomise_bn
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import l0tre.certify.window as W
from l0tre.certify import bound_model, build_graph, subset_boxes
from l0tre.certify.window import Rect, crop, make_plan, uncrop


def _models() -> dict[str, tuple[nn.Module, tuple[int, int, int], object]]:
    torch.manual_seed(3)
    conv_stack = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(3, 4, 3, dilation=2), nn.BatchNorm2d(4), nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(), nn.LazyLinear(5), nn.ReLU(),
        nn.Linear(5, 3),
    )
    conv_stack(torch.zeros(1, 1, 14, 14))
    strided = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3),
    )
    return {
        "conv_stack": (randomise_bn(conv_stack, 1), (1, 14, 14), None),
        "strided": (strided.eval(), (2, 16, 16), ((0.5, 0.4), (0.3, 0.2))),
        "resnet": (randomise_bn(TinyResNet(), 2), (2, 12, 12), ((0.4, 0.5), (0.2, 0.3))),
        "normalised": (Normalised(strided, [0.2, 0.3], [0.5, 0.6]).eval(), (2, 16, 16), None),
    }


def _l0_boxes(shape: tuple[int, int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g, dtype=torch.float64)
    h, w = shape[1:]
    # compact subsets (neighbouring pixels) and a few scattered ones
    rows = []
    for i in range(10):
        r, c = int(torch.randint(0, h - 1, (1,), generator=g)), int(
            torch.randint(0, w - 1, (1,), generator=g))
        k = 1 + i % 3
        rows.append([r * w + c, r * w + c + 1, (r + 1) * w + c][:k])
    rows.append([0, h * w - 1, -1])
    subsets = torch.tensor([r + [-1] * (3 - len(r)) for r in rows])
    return subset_boxes(x0, subsets)


@pytest.mark.parametrize("name", list(_models()))
@pytest.mark.parametrize("method", ["ibp", "forward", "crown", "hybrid"])
def test_windowed_equals_dense(name: str, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, shape, pre = _models()[name]
    g = build_graph(model, shape, preprocessing=pre)
    lo, hi = _l0_boxes(shape, seed=len(name))
    plan = make_plan(g, lo[:1], hi[:1])
    assert any(geom is not None for geom in plan.geom), "the test must exercise windows"
    lb_w, ub_w = bound_model(g, lo, hi, method=method)
    # sound on samples
    pts = lo + (hi - lo) * torch.rand((64, *lo.shape), dtype=lo.dtype)
    out = g.forward(pts.flatten(0, 1)).view(64, lo.shape[0], -1)
    assert bool((lb_w <= out.min(0).values + 1e-9).all())
    assert bool((ub_w >= out.max(0).values - 1e-9).all())
    monkeypatch.setattr(W, "_DENSE_FRACTION", 0.0)
    assert all(geom is None for geom in make_plan(g, lo[:1], hi[:1]).geom)
    lb_d, ub_d = bound_model(g, lo, hi, method=method)
    assert torch.allclose(lb_w, lb_d, atol=1e-8) and torch.allclose(ub_w, ub_d, atol=1e-8)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    full=st.tuples(st.integers(2, 7), st.integers(2, 7)),
    win=st.tuples(st.integers(0, 6), st.integers(1, 4), st.integers(0, 6), st.integers(1, 4)),
    box=st.tuples(st.integers(-2, 6), st.integers(1, 6), st.integers(-2, 6), st.integers(1, 6)),
    dense=st.booleans(),
)
def test_crop_uncrop_adjoint(full: tuple[int, int], win: tuple[int, int, int, int],
                             box: tuple[int, int, int, int], dense: bool) -> None:
    """<a, crop(x)> = <uncrop(a), x> + bias, where the bias accounts for the fixed values."""
    hh, ww = full
    h0, dh, w0, dw = win
    h0, w0 = min(h0, hh - 1), min(w0, ww - 1)
    geom = None if dense else Rect(h0, min(hh, h0 + dh), w0, min(ww, w0 + dw))
    rect = Rect(box[0], box[0] + box[1], box[2], box[2] + box[3])
    c = 2
    ref = torch.randn(c, hh, ww, dtype=torch.float64)
    shape = (3, c, hh, ww) if geom is None else (3, c, geom.h, geom.w)
    x = torch.randn(shape, dtype=torch.float64)
    a = torch.randn(3, 4, c, rect.h, rect.w, dtype=torch.float64)
    cropped = crop(x, geom, ref, full, rect, pad=0.0)
    lhs = (a * cropped.unsqueeze(1)).flatten(2).sum(2)
    a_back, bias = uncrop(a, rect, geom, ref, full)
    rhs = (a_back * x.unsqueeze(1)).flatten(2).sum(2)
    if bias is not None:
        rhs = rhs + bias
    assert torch.allclose(lhs, rhs, atol=1e-9)
