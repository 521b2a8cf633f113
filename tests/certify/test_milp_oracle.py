"""Soundness against an exact MILP oracle on tiny ReLU networks.

For random networks, inputs and feature subsets: every margin lower bound is at most the
exact minimum (so a certificate implies the MILP finds no counterexample), and every MILP
counterexample (re-checked by a forward pass) means the set is not certified.
"""

from __future__ import annotations

import numpy as np
import torch
from _certify_helpers import conv_net, forward_margin, milp_min_margins, mlp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l0tre.certify import build_graph, certify_boxes_bab, certify_subsets, subset_boxes
from l0tre.certify.bounds import BoundOptions
from l0tre.certify.target import resolve

_TOL = 1e-6
_VARIANTS = [("ibp", "auto"), ("forward", "auto"), ("crown", "forward"), ("crown", "crown"),
             ("crown", "ibp"), ("hybrid", "auto")]


def _check(model: torch.nn.Module, shape: tuple[int, int, int], x0: torch.Tensor,
           subsets: torch.Tensor, features: str) -> tuple[int, int]:
    """Compare every variant with the MILP; returns (#certified, #falsified by the MILP)."""
    graph = build_graph(model, shape)
    label = int(graph.forward(x0.unsqueeze(0)).argmax())
    lo, hi = subset_boxes(x0.double(), subsets, features=features)
    exact = []
    for i in range(len(subsets)):
        res = milp_min_margins(model, lo[i].numpy(), hi[i].numpy(), label, shape)
        exact.append(res)
    certified = falsified = 0
    for method, inter in _VARIANTS:
        r = certify_subsets(graph, x0, label, subsets, features=features, method=method,
                            intermediate=inter)
        for i, res in enumerate(exact):
            for k, (val, _) in enumerate(res):
                if k != label:
                    assert float(r.margin_lb[i, k]) <= val + _TOL, (method, inter, i, k)
            worst = min(v for v, _ in res)
            if bool(r.proven[i]):
                certified += 1
                assert worst > -_TOL
    for i, res in enumerate(exact):
        for val, xs in res:
            if xs is None or val >= -1e-4:
                continue
            x = torch.tensor(xs, dtype=torch.float64).view(1, *shape)
            x = torch.minimum(torch.maximum(x, lo[i:i + 1]), hi[i:i + 1])
            if float(forward_margin(model, x, label)[0]) < 0:  # a genuine counterexample
                falsified += 1
                for method, inter in _VARIANTS:
                    r = certify_subsets(graph, x0, label, subsets[i:i + 1], features=features,
                                        method=method, intermediate=inter)
                    assert not bool(r.proven[0])
                bab = certify_boxes_bab(graph, lo[i:i + 1], hi[i:i + 1], label, max_depth=6,
                                        max_nodes=200)
                assert not bool(bab.proven[0])
    return certified, falsified


def _subsets(n: int, k: int, count: int, g: torch.Generator) -> torch.Tensor:
    return torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(count)])


_SETTINGS = settings(max_examples=8, deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(seed=st.integers(0, 10_000), k=st.integers(1, 3))
def test_mlp_pixel_subsets(seed: int, k: int) -> None:
    shape = (1, 3, 3)
    model = mlp(seed, shape, hidden=(8, 6))
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g)
    _check(model, shape, x0, _subsets(9, k, 5, g), "pixel")


@_SETTINGS
@given(seed=st.integers(0, 10_000), k=st.integers(1, 2))
def test_mlp_multichannel_pixels_and_elements(seed: int, k: int) -> None:
    shape = (2, 2, 2)
    model = mlp(seed, shape, hidden=(7,))
    g = torch.Generator().manual_seed(seed + 1)
    x0 = torch.rand(shape, generator=g)
    _check(model, shape, x0, _subsets(4, k, 3, g), "pixel")
    _check(model, shape, x0, _subsets(8, k + 1, 3, g), "element")


@_SETTINGS
@given(seed=st.integers(0, 10_000), k=st.integers(1, 3), pool=st.booleans())
def test_conv_net_subsets(seed: int, k: int, pool: bool) -> None:
    shape = (1, 4, 4)
    model = conv_net(seed, pool=pool)
    g = torch.Generator().manual_seed(seed + 2)
    x0 = torch.rand(shape, generator=g)
    _check(model, shape, x0, _subsets(16, k, 4, g), "pixel")


def test_oracle_sees_both_outcomes() -> None:
    """The comparison is not vacuous: over a few fixed instances both certified and
    MILP-falsified sets occur."""
    cert = fals = 0
    for seed in range(6):
        shape = (1, 3, 3)
        model = mlp(seed, shape, hidden=(8, 6))
        g = torch.Generator().manual_seed(seed)
        x0 = torch.rand(shape, generator=g)
        c, f = _check(model, shape, x0, _subsets(9, 1 + seed % 3, 5, g), "pixel")
        cert, fals = cert + c, fals + f
    assert cert > 0 and fals > 0


def test_general_boxes_vs_milp() -> None:
    """L∞-style boxes (every coordinate free) on the conv net with max pooling."""
    shape = (1, 4, 4)
    for seed in range(2):
        model = conv_net(seed)
        target = resolve(model, shape)
        g = torch.Generator().manual_seed(seed)
        x0 = torch.rand((3, *shape), generator=g, dtype=torch.float64)
        eps = torch.tensor([0.02, 0.06, 0.15], dtype=torch.float64).view(-1, 1, 1, 1)
        lo, hi = (x0 - eps).clamp(0, 1), (x0 + eps).clamp(0, 1)
        labels = target.graph.forward(x0).argmax(1)
        exact = [milp_min_margins(model, lo[i].numpy(), hi[i].numpy(), int(labels[i]), shape)
                 for i in range(3)]
        for method in ("ibp", "forward", "crown"):
            for inter in ("auto", "crown"):
                lb = target.margin_bounds(lo, hi, labels, BoundOptions(method, inter))
                for i in range(3):
                    for k, (val, _) in enumerate(exact[i]):
                        assert float(lb[i, k]) <= val + _TOL
                        assert np.isfinite(val) or k == int(labels[i])
