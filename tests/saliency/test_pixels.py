"""Pixel selection ``pixels="all" | "sample:K" | "top:K"``: parsing, what is searched, and that a
selection never claims a lower bound."""

from __future__ import annotations

import itertools

import pytest
import torch

import l0tre
from l0tre.apps.saliency import saliency
from l0tre.engine.features import FeatureKind, FeatureSpace, PixelRule, SelectionKind, select_space

from .oracle import tiny_net


def _x(seed: int, n: int = 3, c: int = 3, size: int = 6) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("text", "want"), [
    ("all", PixelRule(SelectionKind.ALL)), ("ALL", PixelRule(SelectionKind.ALL)),
    ("sample:5", PixelRule(SelectionKind.SAMPLE, 5)), ("sample:5:7", PixelRule(SelectionKind.SAMPLE, 5, 7)),
    ("top:1000", PixelRule(SelectionKind.TOP, 1000)),
])
def test_rules_parse(text: str, want: PixelRule) -> None:
    assert PixelRule.parse(text) == want
    assert PixelRule.parse(str(want)) == want


@pytest.mark.parametrize("text", ["sample:0", "top:0", "top:", "top", "sample:-1", "all:3", "top:3:1", "some:3",
                                  "sample:2:x", "top:1.5"])
def test_bad_rules_are_refused_naming_pixels(text: str) -> None:
    with pytest.raises(ValueError, match="pixels"):
        PixelRule.parse(text)


def test_sample_is_seeded_and_distinct() -> None:
    space = FeatureSpace(FeatureKind.PIXEL, (3, 6, 6))
    a = space.select("sample:10")
    b = space.select("sample:10")
    c = space.select("sample:10:1")
    assert a.n == 10 and torch.equal(a.positions, b.positions) and not torch.equal(a.positions, c.positions)
    assert space.select("sample:36").positions is None  # K >= n: every feature
    with pytest.raises(ValueError, match="top"):
        space.select("top:3")  # needs the model: select_space


def test_top_k_is_the_exact_largest_drop_for_a_linear_margin() -> None:
    """Two classes and a linear model: the margin is linear, so the screen's first-order drop is
    the exact largest drop over the box, reached at grid corners: compare with brute force."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2)).eval()
    clf = l0tre.Classifier(net)
    x = _x(1, 1, 3, 4)
    j = int(net(x).argmax())
    with torch.no_grad():
        base = net(x)[0]
        m0 = float(base[j] - base[1 - j])
        drop = torch.zeros(16)
        for f in range(16):
            for colour in itertools.product([0.0, 1.0], repeat=3):
                xp = x.clone()
                xp[0, :, f // 4, f % 4] = torch.tensor(colour)
                out = net(xp)[0]
                drop[f] = max(float(drop[f]), m0 - float(out[j] - out[1 - j]))
    space = select_space(FeatureSpace(FeatureKind.PIXEL, (3, 4, 4)), "top:5", clf, x)
    want = torch.argsort(-drop, stable=True)[:5].sort().values
    assert torch.equal(space.positions, want)


def test_selection_maps_equal_the_full_map_on_their_pixels_and_claim_no_lower_bound() -> None:
    net = tiny_net(2, 3, size=6)
    x = _x(2)
    full = saliency(net, x, mode="eager", incremental=False)
    assert full.lower is not None and full.complete
    for rule in ("sample:9", "top:9"):
        s = saliency(net, x, pixels=rule, mode="eager", incremental=False)
        assert s.lower is None and not s.complete and s.notes
        assert not s.to_dict()["summary"]["lower_bound_claimed"]
        assert s.evaluated.flatten(1).sum(1).tolist() == [9, 9, 9]
        ev = s.evaluated
        assert bool(s.sensitivity[~ev].isnan().all())
        torch.testing.assert_close(s.sensitivity[ev], full.sensitivity[ev], atol=1e-6, rtol=1e-6)
        assert torch.equal(s.flips[ev], full.flips[ev]) and not bool(s.flips[~ev].any())
        has_flip = s.flips.flatten(1).any(1)
        assert bool((s.upper[has_flip] == 0).all())  # a verified single-pixel example: upper = 0


def test_top_is_per_image_in_saliency() -> None:
    net = tiny_net(2, 3, size=6)
    x = _x(2)
    s = saliency(net, x, pixels="top:4")
    clf = l0tre.Classifier(net)
    for i in range(3):
        one = select_space(FeatureSpace(FeatureKind.PIXEL, (3, 6, 6)), "top:4", clf, x[i : i + 1])
        assert torch.equal(s.evaluated[i].flatten().nonzero().squeeze(1), one.positions)


def test_evaluate_accepts_the_rules() -> None:
    net = tiny_net(2, 3, size=6)
    x = _x(2)
    for rule, n in (("sample:7", 7), ("top:7", 7), ("all", 36)):
        res = l0tre.evaluate(net, x, t_max=1, pixels=rule)
        assert res.n_features == n
    with pytest.raises(ValueError, match="pixels"):
        l0tre.evaluate(net, x, t_max=1, pixels="sample:0")
