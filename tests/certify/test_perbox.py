"""Per-box windows: the same bounds as the dense computation, crop/uncrop adjointness, and
the shared-rows shortcut of the final backward pass."""

from __future__ import annotations

import pytest
import torch
from _certify_helpers import randomise_bn
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import l0tre.certify.window as W
from l0tre.certify import bound_model, build_graph, subset_boxes
from l0tre.certify.bounds import extent_groups
from l0tre.certify.boxes import bound_margins
from l0tre.certify.perbox import crop_shifted, eligible, make_perbox_plan, uncrop_shifted
from l0tre.certify.settings import CertifySettings
from l0tre.certify.target import resolve
from l0tre.certify.window import Rect


class _Res(nn.Module):
    """Stride-1 residual block with padding and dilation, then a dense head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
        self.c3 = nn.Conv2d(4, 3, 2)
        self.fc = nn.Linear(3 * 13 * 13, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.c1(x)))
        h = torch.relu(h + self.c2(h))
        return self.fc(torch.relu(self.c3(h)).flatten(1))


def _sdnn(size: int) -> nn.Module:
    """The paper's sDNN layout (untrained): 2×2 convolutions with 8, 16, 32 channels."""
    torch.manual_seed(5)
    m = size - 3
    net = nn.Sequential(
        nn.Conv2d(1, 8, 2), nn.ReLU(), nn.Conv2d(8, 16, 2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 2), nn.BatchNorm2d(32), nn.ReLU(), nn.Flatten(), nn.Linear(32 * m * m, 10),
    )
    return randomise_bn(net, 4)


def _models() -> dict[str, tuple[nn.Module, tuple[int, int, int]]]:
    torch.manual_seed(7)
    return {"sdnn": (_sdnn(16), (1, 16, 16)), "residual": (randomise_bn(_Res(), 3), (2, 14, 14))}


def _boxes(shape: tuple[int, int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Triples of nearby pixels all over the image (corners included), one narrowed box."""
    g = torch.Generator().manual_seed(seed)
    _, h, w = shape
    x0 = torch.rand(shape, generator=g, dtype=torch.float64)
    rows = [[0, 1, w], [h * w - 1, h * w - 2, (h - 1) * w - 1], [w - 1, 2 * w - 1, -1]]
    for _ in range(9):
        r, c = int(torch.randint(0, h - 3, (1,), generator=g)), int(torch.randint(0, w - 3, (1,), generator=g))
        dr = torch.randint(0, 3, (2,), generator=g).tolist()
        dc = torch.randint(0, 3, (2,), generator=g).tolist()
        rows.append([r * w + c, (r + dr[0]) * w + c + dc[0], (r + dr[1]) * w + c + dc[1]])
    lo, hi = subset_boxes(x0, torch.tensor(rows))
    hi[3] = lo[3] + (hi[3] - lo[3]) * 0.4  # a halved-like box: narrower ranges, same support
    return lo, hi


@pytest.mark.parametrize("name", list(_models()))
@pytest.mark.parametrize("method", ["ibp", "forward", "crown", "hybrid"])
@pytest.mark.parametrize("intermediate", ["auto", "crown"])
def test_perbox_equals_dense(name: str, method: str, intermediate: str,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    model, shape = _models()[name]
    g = build_graph(model, shape)
    lo, hi = _boxes(shape, seed=len(name))
    assert eligible(g)
    plan = make_perbox_plan(g, lo, hi)
    assert plan is not None and plan.shift is not None
    assert len({tuple(t) for t in plan.shift.tolist()}) > 3, "the boxes must sit at different places"
    assert any(geom is not None for geom in plan.geom[1:])
    lb_p, ub_p = bound_model(g, lo, hi, method=method, intermediate=intermediate)
    pts = lo + (hi - lo) * torch.rand((64, *lo.shape), dtype=lo.dtype)
    out = g.forward(pts.flatten(0, 1)).view(64, lo.shape[0], -1)
    assert bool((lb_p <= out.min(0).values + 1e-9).all())
    assert bool((ub_p >= out.max(0).values - 1e-9).all())
    monkeypatch.setattr(W, "_DENSE_FRACTION", 0.0)
    assert make_perbox_plan(g, lo, hi) is None
    lb_d, ub_d = bound_model(g, lo, hi, method=method, intermediate=intermediate)
    assert torch.allclose(lb_p, lb_d, atol=1e-9, rtol=0) and torch.allclose(ub_p, ub_d, atol=1e-9, rtol=0)


def test_not_eligible() -> None:
    pooled = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 2))
    strided = nn.Sequential(nn.Conv2d(1, 2, 2, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 2))
    lo, hi = subset_boxes(torch.rand(1, 7, 7, dtype=torch.float64), torch.tensor([[0, 1], [30, 31]]))
    for net in (pooled, strided):
        g = build_graph(net.eval(), (1, 7, 7))
        assert not eligible(g)
        assert make_perbox_plan(g, lo, hi) is None


def test_shared_rows_and_order() -> None:
    """One label for the whole batch (rows computed once), boxes re-ordered by window size:
    the same bounds as bounding each box alone."""
    model, shape = _models()["sdnn"]
    target = resolve(model, shape)
    lo, hi = _boxes(shape, seed=11)
    groups = extent_groups(lo, hi)
    assert len(groups) > 1
    assert torch.equal(torch.sort(torch.cat(groups)).values, torch.arange(lo.shape[0]))
    labels = torch.full((lo.shape[0],), 3)
    batch = bound_margins(target, lo, hi, labels, CertifySettings(method="crown", batch_size=4))
    alone = torch.cat([bound_margins(target, lo[i:i + 1], hi[i:i + 1], labels[i:i + 1],
                                     CertifySettings(method="crown", batch_size=1))
                       for i in range(lo.shape[0])])
    assert torch.allclose(batch, alone, atol=1e-9, rtol=0)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    full=st.tuples(st.integers(2, 7), st.integers(2, 7)),
    win=st.tuples(st.integers(-2, 2), st.integers(1, 4), st.integers(-2, 2), st.integers(1, 4)),
    box=st.tuples(st.integers(-3, 3), st.integers(1, 6), st.integers(-3, 3), st.integers(1, 6)),
    rel=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_crop_uncrop_shifted_adjoint(full: tuple[int, int], win: tuple[int, int, int, int],
                                     box: tuple[int, int, int, int], rel: bool, seed: int) -> None:
    """``<a, crop(x)> = <uncrop(a), x> + bias`` (the bias: the fixed reference values)."""
    g = torch.Generator().manual_seed(seed)
    hh, ww = full
    geom = Rect(win[0], win[0] + win[1], win[2], win[2] + win[3])
    rect = Rect(box[0], box[0] + box[1], box[2], box[2] + box[3]) if rel else Rect(0, hh, 0, ww)
    b, c = 4, 2
    shift = torch.stack([torch.randint(-1, hh, (b,), generator=g), torch.randint(-1, ww, (b,), generator=g)], 1)
    ref = torch.randn(c, hh, ww, dtype=torch.float64, generator=g)
    x = torch.randn(b, c, geom.h, geom.w, dtype=torch.float64, generator=g)
    a = torch.randn(b, 3, c, rect.h, rect.w, dtype=torch.float64, generator=g)
    cropped = crop_shifted(x, geom, ref, full, rect, 0.0, shift, rel)
    lhs = (a * cropped.unsqueeze(1)).flatten(2).sum(2)
    a_back, bias = uncrop_shifted(a, rect, geom, ref, full, shift, rel)
    rhs = (a_back * x.unsqueeze(1)).flatten(2).sum(2)
    if bias is not None:
        rhs = rhs + bias
    assert torch.allclose(lhs, rhs, atol=1e-9)
    # and the values themselves: the reference map with each box's window pasted in
    for i in range(b):
        canvas = torch.nn.functional.pad(ref, (10, 10, 10, 10))
        mask = torch.zeros(hh + 20, ww + 20, dtype=torch.bool)
        mask[10:10 + hh, 10:10 + ww] = True
        dh, dw = (int(shift[i, 0]), int(shift[i, 1]))
        r0, c0 = 10 + geom.h0 + dh, 10 + geom.w0 + dw
        canvas[:, r0:r0 + geom.h, c0:c0 + geom.w] = x[i]
        canvas = canvas * mask
        sh, sw = (dh, dw) if rel else (0, 0)
        want = canvas[:, 10 + rect.h0 + sh:10 + rect.h1 + sh, 10 + rect.w0 + sw:10 + rect.w1 + sw]
        assert torch.allclose(cropped[i], want)
