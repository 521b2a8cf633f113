"""The t = 2 separable route: structural overlaps, exact additivity, sound level results."""

from __future__ import annotations

import itertools

import pytest
import torch
from _certify_helpers import _init, milp_min_margins, mlp, zoo
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from l0tre.certify import Status, build_graph, certify_level, subset_boxes
from l0tre.certify.boxes import bound_margins
from l0tre.certify.separable import feature_boxes, feature_overlaps
from l0tre.certify.settings import CertifySettings
from l0tre.certify.target import resolve


def conv_head(seed: int, side: int = 6, channels: int = 1, scale: float = 1.5, classes: int = 3) -> nn.Sequential:
    """conv 2×2 → ReLU → conv 2×2 → ReLU → linear (the sDNN pattern), random weights."""
    g = torch.Generator().manual_seed(seed)
    c1, c2 = nn.Conv2d(channels, 3, 2), nn.Conv2d(3, 3, 2)
    lin = nn.Linear(3 * (side - 2) ** 2, classes)
    for layer in (c1, c2, lin):
        _init(layer, g, scale=scale)
    return nn.Sequential(c1, nn.ReLU(), c2, nn.ReLU(), nn.Flatten(), lin).eval().double()


def _set(x0: torch.Tensor, features: str, f: int, v: torch.Tensor) -> torch.Tensor:
    x = x0.clone()
    c, h, w = x.shape
    if features == "pixel":
        x[:, f // w, f % w] = v
    else:
        x.view(-1)[f] = v[0]
    return x


def _assert_additive(model: nn.Module, shape: tuple[int, int, int], pre: object, features: str, seed: int) -> int:
    """For every pair the overlaps call separable: f(x⊕a⊕b) − f(x⊕a) − f(x⊕b) + f(x) = 0."""
    model = model.double().eval()
    target = resolve(model, shape, preprocessing=pre)
    ov = feature_overlaps(target, features)
    assert ov is not None and bool(ov.diagonal().all()) and bool((ov == ov.T).all())
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g, dtype=torch.float64)
    cf = shape[0] if features == "pixel" else 1
    pairs = torch.triu(~ov, diagonal=1).nonzero().tolist()
    for i, j in pairs[:: max(1, len(pairs) // 40)]:
        vi, vj = torch.rand(cf, generator=g, dtype=torch.float64), torch.rand(cf, generator=g, dtype=torch.float64)
        xs = torch.stack([x0, _set(x0, features, i, vi), _set(x0, features, j, vj),
                          _set(_set(x0, features, i, vi), features, j, vj)])
        z = target.graph.forward(xs)
        assert torch.allclose(z[3] - z[1] - z[2] + z[0], torch.zeros_like(z[0]), atol=1e-9), (i, j)
    return len(pairs)


@pytest.mark.parametrize("name", sorted(zoo()))
@pytest.mark.parametrize("features", ["pixel", "element"])
def test_separable_pairs_are_exactly_additive(name: str, features: str) -> None:
    model, shape, pre = zoo()[name]
    _assert_additive(model, shape, pre, features, seed=1)


@settings(max_examples=16, deadline=None)
@given(seed=st.integers(0, 10_000), side=st.integers(7, 9), pool=st.sampled_from(["none", "middle", "last"]),
       stride=st.integers(1, 2))
def test_random_conv_nets_are_additive_where_separable(seed: int, side: int, pool: str, stride: int) -> None:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(2, 3, 2, stride=stride, padding=seed % 2), nn.BatchNorm2d(3), nn.ReLU()]
    if pool == "middle":
        layers.append(nn.MaxPool2d(2, stride=1))
    if pool == "last":  # the max-pool is the last nonlinearity: it alone mixes neighbours
        layers.append(nn.MaxPool2d(2, stride=1 + seed % 2))
    else:
        layers += [nn.Conv2d(3, 2, 2), nn.ReLU()]
    layers.append(nn.Flatten())
    body = nn.Sequential(*layers).eval()
    flat = body(torch.zeros(1, 2, side, side)).shape[1]
    model = nn.Sequential(*layers, nn.Linear(flat, 3)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 1.5)
    assert _assert_additive(model, (2, side, side), None, "pixel", seed) > 0


def test_overlaps_follow_the_structure() -> None:
    # max-pool mixes the pixels of one window; a dense hidden layer mixes everything
    pool = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4, 2)).eval()
    ov = feature_overlaps(resolve(pool, (1, 4, 4)))
    assert ov is not None
    assert bool(ov[0, 1]) and bool(ov[0, 4]) and bool(ov[0, 5])  # same 2×2 window
    assert not bool(ov[0, 2]) and not bool(ov[0, 8]) and not bool(ov[5, 15])
    dense = feature_overlaps(resolve(mlp(0), (1, 3, 3)))
    assert dense is not None and bool(dense.all())
    head = feature_overlaps(resolve(conv_head(0), (1, 6, 6)))
    assert head is not None
    # second conv output footprint of a pixel is its 3×3 neighbourhood
    assert bool(head[0, 2]) and bool(head[0, 14]) and not bool(head[0, 3]) and not bool(head[0, 18])


@pytest.mark.parametrize("features", ["pixel", "element"])
def test_feature_boxes_tile_the_range(features: str) -> None:
    x0 = torch.rand(3, 2, 2, dtype=torch.float64)
    feats = torch.tensor([0, 3])
    lo, hi = feature_boxes(x0, features, feats, 3, (0.0, 1.0))
    cf = 3 if features == "pixel" else 1
    assert lo.shape == (2 * 3**cf, 3, 2, 2)
    free = (hi > lo)
    assert int(free.flatten(1).sum(1).max()) == cf and int(free.flatten(1).sum(1).min()) == cf
    # the cells of one feature have volume 1 in total and stay in the range
    vol = torch.where(free, hi - lo, torch.ones_like(lo)).flatten(1).prod(1).view(2, -1).sum(1)
    assert torch.allclose(vol, torch.ones(2, dtype=torch.float64))
    assert float(lo.min()) >= 0.0 and float(hi.max()) <= 1.0
    fixed = ~free  # every other coordinate keeps x0
    assert torch.equal(lo[fixed], x0.expand_as(lo)[fixed]) and torch.equal(hi[fixed], x0.expand_as(hi)[fixed])
    # the free coordinates are the feature's own: channel c of pixel 0 / 3, or element 0 / 3
    where = free.flatten(1).nonzero()[:, 1].view(2 * 3**cf, cf)
    own = [[0, 4, 8], [3, 7, 11]] if features == "pixel" else [[0], [3]]
    assert where.view(2, 3**cf, cf).tolist() == [[o] * 3**cf for o in own]


def _exact_level2(model: nn.Module, x0: torch.Tensor, label: int, ov: torch.Tensor) -> float:
    """Exact minimum margin over every pair box: a MILP per non-separable pair, and for the
    separable ones the sum of single-pixel MILP minima (exact by additivity, tested above)."""
    shape = tuple(x0.shape)
    n = ov.shape[0]

    def milp(subset: tuple[int, ...]) -> list[float]:
        lo, hi = subset_boxes(x0, torch.tensor([subset]))
        return [v for v, _ in milp_min_margins(model, lo[0].numpy(), hi[0].numpy(), label, shape)]

    z0 = model(x0.unsqueeze(0))[0]
    m0 = (z0[label] - z0).tolist()
    single = [milp((i,)) for i in range(n)]
    best = min(min(s) for s in single)
    for i, j in itertools.combinations(range(n), 2):
        if bool(ov[i, j]):
            best = min(best, min(milp((i, j))))
        else:
            best = min(best, min(a + b - c for a, b, c in zip(single[i], single[j], m0, strict=True)))
    return best


def test_separable_route_agrees_with_milp_and_the_covering() -> None:
    outcomes = set()
    for seed in range(2):
        model = conv_head(seed + 3, side=5, classes=2)
        shape = (1, 5, 5)
        x0 = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        label = int(build_graph(model, shape).forward(x0.unsqueeze(0)).argmax())
        ov = feature_overlaps(resolve(model, shape))
        assert ov is not None
        exact0 = _exact_level2(model, x0, label, ov)
        # raising the label's bias by s raises every margin by exactly s: put the exact
        # minimum just below and just above zero
        for want in (-0.2, 0.2, 1.0):
            with torch.no_grad():
                model[-1].bias[label] += want - exact0
            exact0 = want
            res = certify_level(model, x0, label, 2, method="crown", time_limit=60)
            old = certify_level(model, x0, label, 2, method="crown", time_limit=60, separable=False)
            outcomes.add(res.status)
            assert {res.status, old.status} != {Status.PROVEN, Status.FALSIFIED}
            if res.status is Status.PROVEN:
                assert res.separable_pairs > 0
            elif res.status is Status.FALSIFIED:
                x, subset = res.counterexample, res.counterexample_subset
                assert x is not None and subset is not None and len(subset) <= 2
                changed = (x != x0).any(0).flatten().nonzero().flatten().tolist()
                assert set(changed) <= set(subset)
                assert int(model(x.unsqueeze(0)).argmax()) != label
            # tiny nets: bounds + branch and bound decide both sides of the boundary
            assert res.status is (Status.PROVEN if want > 0 else Status.FALSIFIED)
    assert outcomes == {Status.PROVEN, Status.FALSIFIED}


def test_separable_bounds_below_sampled_margins() -> None:
    """Single-feature sub-box bounds are sound: below the margins at the cells' points."""
    model = conv_head(11)
    target = resolve(model, (1, 6, 6))
    x0 = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    label = int(target.graph.forward(x0.unsqueeze(0)).argmax())
    lo, hi = feature_boxes(x0, "pixel", torch.arange(36), 4, (0.0, 1.0))
    labels = torch.tensor([label]).expand(lo.shape[0])
    lb = bound_margins(target, lo, hi, labels, CertifySettings(method="crown", batch_size=64))
    for a in torch.linspace(0, 1, 5, dtype=torch.float64):
        x = lo + a * (hi - lo)
        z = target.graph.forward(x)
        m = z[:, label : label + 1] - z
        m[:, label] = float("inf")
        assert bool((lb <= m + 1e-9).all())


def test_separable_route_out_of_time_is_unknown() -> None:
    model = conv_head(3, side=5, classes=2)
    x0 = torch.rand(1, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    label = int(build_graph(model, (1, 5, 5)).forward(x0.unsqueeze(0)).argmax())
    with torch.no_grad():
        model[-1].bias[label] += 10.0  # certainly robust: only the clock can stop it
    assert certify_level(model, x0, label, 2, method="crown", time_limit=60).status is Status.PROVEN
    res = certify_level(model, x0, label, 2, method="crown", time_limit=1e-9)
    assert res.status is Status.UNKNOWN and res.separable_pairs == 0


@pytest.mark.parametrize("features", ["pixel", "element"])
def test_separable_route_on_colour_inputs(features: str) -> None:
    """Two channels per pixel (sub-boxes split every channel); results agree with the box
    covering and proven levels survive random sampling of real values."""
    model = conv_head(7, side=5, channels=2, classes=2)
    shape = (2, 5, 5)
    x0 = torch.rand(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    label = int(build_graph(model, shape).forward(x0.unsqueeze(0)).argmax())
    n = 25 if features == "pixel" else 50
    seen = set()
    for shift in (0.0, 2.0, 6.0):
        with torch.no_grad():
            model[-1].bias[label] += shift
        res = certify_level(model, x0, label, 2, features=features, method="crown", time_limit=60)
        old = certify_level(model, x0, label, 2, features=features, method="crown", time_limit=60, separable=False)
        seen.add(res.status)
        assert {res.status, old.status} != {Status.PROVEN, Status.FALSIFIED}
        if res.status is Status.FALSIFIED:
            x = res.counterexample
            assert x is not None and int(model(x.unsqueeze(0)).argmax()) != label
        if res.status is Status.PROVEN:
            assert res.separable_pairs > 0
            g = torch.Generator().manual_seed(0)
            xs = x0.repeat(4000, 1, 1, 1)
            for row in range(4000):
                i, j = torch.randperm(n, generator=g)[:2].tolist()
                for f in (i, j):
                    _set_inplace(xs[row], features, f, torch.rand(2, generator=g, dtype=torch.float64))
            assert bool((model(xs).argmax(1) == label).all())
    assert Status.PROVEN in seen


def _set_inplace(x: torch.Tensor, features: str, f: int, v: torch.Tensor) -> None:
    c, h, w = x.shape
    if features == "pixel":
        x[:, f // w, f % w] = v[:c]
    else:
        x.view(-1)[f] = v[0]


def test_pairs_proven_from_single_bounds_are_truly_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the counterexample search every separable pair is decided by the bound sum
    alone: each pair it proves has an exact (MILP) minimum margin above zero, while pairs with
    a negative exact minimum exist."""
    import l0tre.certify.separable as sep

    monkeypatch.setattr(sep, "_counterexample", lambda *args, **kwargs: None)
    model = conv_head(5, side=5, classes=2)
    shape = (1, 5, 5)
    x0 = torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = resolve(model, shape)
    label = int(target.graph.forward(x0.unsqueeze(0)).argmax())
    ov = feature_overlaps(target)
    assert ov is not None
    singles = []
    for i in range(25):
        lo, hi = subset_boxes(x0, torch.tensor([[i]]))
        singles.append(min(v for v, _ in milp_min_margins(model, lo[0].numpy(), hi[0].numpy(), label, shape)))
    with torch.no_grad():
        z0 = model(x0.unsqueeze(0))[0]
    m0 = float(z0[label] - z0[1 - label])
    pairs = torch.triu(~ov, diagonal=1).nonzero().tolist()
    exact0 = {(i, j): singles[i] + singles[j] - m0 for i, j in pairs}
    # put the worst separable pair at -0.2: some pairs unsafe, most safe
    shift = -0.2 - min(exact0.values())
    with torch.no_grad():
        model[-1].bias[label] += shift
    target = resolve(model, shape)
    exact = {p: v + shift for p, v in exact0.items()}
    out = sep.certify_pairs_separable(target, x0, label, ov, CertifySettings(method="crown"), features="pixel",
                                      deadline=float("inf"))
    assert out.counterexample is None
    remaining = {tuple(p) for p in out.remaining.tolist()}
    proven = [p for p in exact if p not in remaining]
    assert len(proven) == out.proven > 0
    assert all(exact[p] > -1e-6 for p in proven)
    assert any(exact[p] < 0 for p in remaining if p in exact)
