"""Coverings of t-subsets by blocks, and certify_level against the exact oracle."""

from __future__ import annotations

import itertools

import pytest
import torch
from _certify_helpers import milp_min_margins, mlp

from l0tre.certify import (
    Status,
    build_graph,
    certify_level,
    covering_blocks,
    initial_regions,
    refine_block,
    subset_boxes,
)
from l0tre.certify.cover import region_features


def _union(block: tuple, shape: tuple[int, int, int], features: str) -> frozenset[int]:
    return frozenset(f for r in block for f in region_features(r, shape, features))


@pytest.mark.parametrize(
    ("shape", "features", "side"),
    [((1, 4, 4), "pixel", 1), ((1, 4, 4), "pixel", 2), ((1, 5, 3), "pixel", 2),
     ((2, 3, 3), "element", 2), ((3, 2, 2), "element", 1), ((1, 3, 3), "pixel", 4)],
)
@pytest.mark.parametrize("t", [1, 2, 3])
def test_blocks_cover_every_t_subset(shape: tuple[int, int, int], features: str, side: int,
                                     t: int) -> None:
    n = shape[1] * shape[2] * (1 if features == "pixel" else shape[0])
    regions = initial_regions(shape, features, side)
    # the regions partition the features
    feats = [f for r in regions for f in region_features(r, shape, features)]
    assert sorted(feats) == list(range(n))
    blocks = [_union(b, shape, features) for b in covering_blocks(regions, t)]
    for subset in itertools.combinations(range(n), t):
        assert any(set(subset) <= b for b in blocks), subset


@pytest.mark.parametrize(("shape", "features"), [((1, 4, 4), "pixel"), ((2, 2, 3), "element")])
@pytest.mark.parametrize("t", [1, 2, 3])
def test_refinement_covers_the_parent(shape: tuple[int, int, int], features: str, t: int) -> None:
    """Recursively refine a few blocks down to single subsets: the children of every block
    cover all its t-subsets and are strictly smaller; the leaves are single t-subsets."""
    regions = initial_regions(shape, features, 2)
    stack = covering_blocks(regions, t)[:3]
    seen = 0
    while stack and seen < 300:
        block = stack.pop()
        seen += 1
        parent = _union(block, shape, features)
        children = refine_block(block, t, features)
        if not children:
            assert len(parent) <= t
            continue
        unions = [_union(c, shape, features) for c in children]
        assert all(u < parent for u in unions)
        for subset in itertools.combinations(sorted(parent), t):
            assert any(set(subset) <= u for u in unions)
        stack.extend(children)


def test_covering_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        covering_blocks([], 0)
    with pytest.raises(ValueError):
        initial_regions((1, 2, 2), "pixel", 0)


def _exhaustive(model: torch.nn.Module, x0: torch.Tensor, label: int, t: int) -> float:
    """Exact minimum margin over all t-pixel subsets of a (1, 3, 3) input."""
    subsets = torch.tensor(list(itertools.combinations(range(9), t)))
    lo, hi = subset_boxes(x0.double(), subsets)
    return min(v for i in range(len(subsets))
               for v, _ in milp_min_margins(model, lo[i].numpy(), hi[i].numpy(), label, (1, 3, 3)))


@pytest.mark.parametrize("t", [1, 2])
def test_certify_level_agrees_with_milp(t: int) -> None:
    """On tiny nets bounds plus branch and bound decide the level exactly: with the label's
    bias set so that the exact (MILP) minimum margin over all t-subsets is -0.1 or +0.1, the
    level is FALSIFIED (with a re-checked counterexample of at most t features) or PROVEN."""
    for seed in range(3):
        shape = (1, 3, 3)
        model = mlp(seed + 20, shape, hidden=(8, 6)).double()
        g = torch.Generator().manual_seed(seed)
        x0 = torch.rand(shape, generator=g, dtype=torch.float64)
        label = int(build_graph(model, shape).forward(x0.unsqueeze(0)).argmax())
        exact = _exhaustive(model, x0, label, t)
        for want in (-0.1, 0.1):
            # raising the label's bias by s raises every margin, and the exact minimum, by s
            with torch.no_grad():
                model[-1].bias[label] += want - exact
            exact = want
            res = certify_level(model, x0, label, t, block=2, time_limit=30)
            assert res.t == t and res.boxes_tried >= 1
            if want > 0:
                assert res.status is Status.PROVEN and res.certified, (seed, want)
                continue
            assert res.status is Status.FALSIFIED, (seed, want)
            x, subset = res.counterexample, res.counterexample_subset
            assert x is not None and subset is not None and 1 <= len(subset) <= t
            changed = (x != x0).flatten().nonzero().flatten().tolist()
            assert set(changed) <= set(subset)
            assert int(model(x.unsqueeze(0)).argmax()) != label


def test_level_of_misclassified_input_is_falsified() -> None:
    model = mlp(3, (1, 3, 3))
    x0 = torch.rand(1, 3, 3)
    label = int(build_graph(model, (1, 3, 3)).forward(x0.unsqueeze(0)).argmax())
    res = certify_level(model, x0, (label + 1) % 3, 1)
    assert res.status is Status.FALSIFIED and res.counterexample_subset == ()


def test_level_without_bab_never_proves_unsafe_inputs() -> None:
    for seed in range(3):
        model = mlp(seed + 40, (1, 3, 3), hidden=(8, 6))
        x0 = torch.rand(1, 3, 3, generator=torch.Generator().manual_seed(seed))
        label = int(build_graph(model, (1, 3, 3)).forward(x0.unsqueeze(0)).argmax())
        res = certify_level(model, x0, label, 1, use_bab=False)
        if res.status is Status.PROVEN:
            assert _exhaustive(model, x0, label, 1) > -1e-6


def test_auto_method_follows_the_dense_part() -> None:
    from torch import nn

    from l0tre.certify.bounds import auto_method

    conv_linear = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)).eval()
    conv_dense = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4), nn.ReLU(),
                               nn.Linear(4, 3)).eval()
    assert auto_method(build_graph(conv_linear, (1, 3, 3))) == "crown"
    assert auto_method(build_graph(conv_dense, (1, 3, 3))) == "hybrid"
    assert auto_method(build_graph(mlp(1, (1, 3, 3)), (1, 3, 3))) == "hybrid"
    expected = r"method: expected one of 'auto', 'ibp', 'forward', 'crown', 'hybrid', got 'milp'"
    with pytest.raises(ValueError, match=expected):
        certify_level(conv_linear, torch.rand(1, 3, 3), 0, 1, method="milp")


@pytest.mark.parametrize("t", [1, 2])
def test_auto_method_decides_like_the_method_it_picks(t: int) -> None:
    from torch import nn

    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(12, 3)).eval()
    for seed in range(3):
        x0 = torch.rand((1, 3, 3), generator=torch.Generator().manual_seed(seed))
        label = int(model(x0.unsqueeze(0)).argmax())
        auto = certify_level(model, x0, label, t, method="auto", time_limit=30)
        crown = certify_level(model, x0, label, t, method="crown", time_limit=30)
        exact = _exhaustive(model, x0, label, t)
        assert auto.status is crown.status
        assert (auto.boxes_tried, auto.boxes_proven, auto.bab_nodes) == (
            crown.boxes_tried, crown.boxes_proven, crown.bab_nodes)
        if auto.status is Status.PROVEN:
            assert exact > -1e-6
