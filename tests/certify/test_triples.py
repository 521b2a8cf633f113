"""The t = 3 component route: connected triples, failure enumeration, exact additivity over
three groups, and level results against an exact MILP oracle."""

from __future__ import annotations

import itertools

import pytest
import torch
from _certify_helpers import milp_min_margins
from torch import nn

import l0tre.certify.triples as triples
from l0tre.certify import Status, certify_level, subset_boxes
from l0tre.certify.separable import feature_overlaps
from l0tre.certify.settings import CertifySettings
from l0tre.certify.target import resolve
from l0tre.certify.triples import connected_triples, decomposed_failures


def one_conv(seed: int, side: int = 5, classes: int = 2) -> nn.Sequential:
    """conv 2×2 → ReLU → linear: pixels further apart than one step never meet."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * (side - 1) ** 2, classes))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    return model.double().eval()


def _setup(model_seed: int, x_seed: int) -> tuple[nn.Sequential, torch.Tensor, int, torch.Tensor]:
    """A one-conv model on 5×5, an input, its predicted label and the overlaps."""
    shape = (1, 5, 5)
    model = one_conv(model_seed)
    x0 = torch.rand(shape, generator=torch.Generator().manual_seed(x_seed), dtype=torch.float64)
    target = resolve(model, shape)
    label = int(target.graph.forward(x0.unsqueeze(0)).argmax())
    ov = feature_overlaps(target)
    assert ov is not None
    return model, x0, label, ov


def _kind(ov: torch.Tensor, tri: tuple[int, int, int]) -> int:
    """Number of overlapping pairs of a triple (0: three singles, 1: pair + single, ≥ 2: connected)."""
    return sum(bool(ov[a, b]) for a, b in itertools.combinations(tri, 2))


def _random_overlaps(n: int, gen: torch.Generator, p: float) -> torch.Tensor:
    a = torch.rand(n, n, generator=gen) < p
    a = torch.triu(a, diagonal=1)
    return a | a.T | torch.eye(n, dtype=torch.bool)


@pytest.mark.parametrize("seed", range(4))
def test_connected_triples_match_brute_force(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = 9
    ov = _random_overlaps(n, gen, 0.1 + 0.2 * seed)
    want = [t for t in itertools.combinations(range(n), 3) if _kind(ov, t) >= 2]
    assert connected_triples(ov).tolist() == [list(t) for t in want]


@pytest.mark.parametrize("seed", range(6))
def test_decomposed_failures_match_brute_force(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n, k = 10, 3
    ov = _random_overlaps(n, gen, 0.25)
    pairs = torch.triu(ov, diagonal=1).nonzero()
    d1 = -torch.rand(n, k, generator=gen, dtype=torch.float64)
    d2 = -1.5 * torch.rand(pairs.shape[0], k, generator=gen, dtype=torch.float64)
    label = seed % k
    d1[:, label] = float("inf")
    d2[:, label] = float("inf")
    tau = -1.4 + 0.3 * torch.rand(k, generator=gen, dtype=torch.float64)
    tau[label] = float("inf")
    row = {tuple(p): i for i, p in enumerate(pairs.tolist())}
    cls = [c for c in range(k) if c != label]  # the label's column is +inf everywhere
    want_singles, want_combos = set(), set()
    for t in itertools.combinations(range(n), 3):
        kind = _kind(ov, t)
        if kind == 0:
            if bool((d1[list(t)].sum(0) <= tau)[cls].any()):
                want_singles.add(t)
        elif kind == 1:
            (a, b), c = next((p, s) for p in itertools.combinations(t, 2) if bool(ov[p[0], p[1]])
                              for s in t if s not in p)
            if bool((d2[row[(a, b)]] + d1[c] <= tau)[cls].any()):
                want_combos.add(t)
    singles, combos, rows, incomplete = decomposed_failures(d1, d2, pairs, ov, tau)
    assert incomplete is None
    assert {tuple(t) for t in singles.tolist()} == want_singles
    got = {tuple(sorted(t)) for t in combos.tolist()}
    assert got == want_combos and len(got) == combos.shape[0]
    assert all(tuple(pairs[r].tolist()) == tuple(c[:2]) for r, c in zip(rows.tolist(), combos.tolist(), strict=True))
    assert want_singles or want_combos  # the case is not vacuous


def _set(x: torch.Tensor, f: int, v: float) -> torch.Tensor:
    x = x.clone()
    x[0, f // x.shape[2], f % x.shape[2]] = v
    return x


def test_three_groups_are_exactly_additive() -> None:
    """What the route relies on: for a triple split into separable components, the change of
    the output is the sum of the components' changes (checked by forward passes)."""
    model = one_conv(1, side=6)
    shape = (1, 6, 6)
    target = resolve(model, shape)
    ov = feature_overlaps(target)
    assert ov is not None
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(shape, generator=gen, dtype=torch.float64)
    f = target.graph.forward
    checked = {0: 0, 1: 0}
    for t in itertools.combinations(range(36), 3):
        kind = _kind(ov, t)
        if kind >= 2 or checked[kind] >= 40:
            continue
        v = torch.rand(3, generator=gen).tolist()
        xa, xb, xc = (_set(x0, t[i], v[i]) for i in range(3))
        xabc = _set(_set(xa, t[1], v[1]), t[2], v[2])
        if kind == 0:
            expect = f(xa[None]) + f(xb[None]) + f(xc[None]) - 2 * f(x0[None])
        else:
            a, b = next(p for p in itertools.combinations(range(3), 2) if bool(ov[t[p[0]], t[p[1]]]))
            c = 3 - a - b
            xp = _set(_set(x0, t[a], v[a]), t[b], v[b])
            expect = f(xp[None]) + f(_set(x0, t[c], v[c])[None]) - f(x0[None])
        assert torch.allclose(f(xabc[None]), expect, atol=1e-10), t
        checked[kind] += 1
    assert checked == {0: 40, 1: 40}


def _milp_min(model: nn.Module, x0: torch.Tensor, label: int, subset: tuple[int, ...]) -> list[float]:
    lo, hi = subset_boxes(x0, torch.tensor([subset]))
    return [v for v, _ in milp_min_margins(model, lo[0].numpy(), hi[0].numpy(), label, tuple(x0.shape))]


def _exact_triples(model: nn.Module, x0: torch.Tensor, label: int, ov: torch.Tensor) -> dict[tuple[int, ...], float]:
    """Exact minimum margin of every triple: a MILP for connected triples; for the others the
    components' MILP minima summed (exact by additivity, tested above)."""
    n = ov.shape[0]
    with torch.no_grad():
        z0 = model(x0.unsqueeze(0))[0]
    m0 = (z0[label] - z0).tolist()
    single = [_milp_min(model, x0, label, (i,)) for i in range(n)]
    pair = {p: _milp_min(model, x0, label, p) for p in itertools.combinations(range(n), 2) if bool(ov[p[0], p[1]])}
    out = {}
    for t in itertools.combinations(range(n), 3):
        kind = _kind(ov, t)
        if kind >= 2:
            vals = _milp_min(model, x0, label, t)
        elif kind == 1:
            p = next(q for q in itertools.combinations(t, 2) if q in pair)
            (c,) = set(t) - set(p)
            vals = [a + b - m for a, b, m in zip(pair[p], single[c], m0, strict=True)]
        else:
            vals = [single[t[0]][k] + single[t[1]][k] + single[t[2]][k] - 2 * m0[k] for k in range(len(m0))]
        out[t] = min(vals)
    return out


def test_level3_route_agrees_with_milp_and_the_covering() -> None:
    model, x0, label, ov = _setup(2, 3)
    exact = _exact_triples(model, x0, label, ov)
    worst = min(exact.values())
    # raising the label's bias by s raises every margin by s: the exact minimum just below / above zero
    for want in (-0.05, 0.05, 1.0):
        with torch.no_grad():
            model[-1].bias[label] += want - worst
        worst = want
        res = certify_level(model, x0, label, 3, method="crown", time_limit=120)
        cover = certify_level(model, x0, label, 3, method="crown", time_limit=120, separable=False)
        assert {res.status, cover.status} != {Status.PROVEN, Status.FALSIFIED}
        assert res.status is (Status.PROVEN if want > 0 else Status.FALSIFIED), want
        if res.status is Status.PROVEN:
            assert res.separable_triples > 0 and res.separable_pairs == 0
        else:
            x, subset = res.counterexample, res.counterexample_subset
            assert x is not None and subset is not None and len(subset) <= 3
            changed = (x != x0).any(0).flatten().nonzero().flatten().tolist()
            assert set(changed) <= set(subset)
            assert int(model(x.unsqueeze(0)).argmax()) != label


def test_decomposed_triples_it_proves_are_truly_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the sampled counterexample search, every decomposed triple not handed on for a
    joint bound has an exact (MILP) minimum above zero; with the worst triple at −0.3, unsafe
    ones exist and are all handed on."""
    monkeypatch.setattr(triples, "sampled_counterexample", lambda *args, **kwargs: None)
    shape = (1, 5, 5)
    model, x0, label, ov = _setup(4, 1)
    exact = _exact_triples(model, x0, label, ov)
    decomposed = {t: v for t, v in exact.items() if _kind(ov, t) < 2}
    shift = -0.3 - min(decomposed.values())
    with torch.no_grad():
        model[-1].bias[label] += shift
    target = resolve(model, shape)
    out = triples.certify_triples_separable(target, x0, label, ov, CertifySettings(method="crown", use_bab=False),
                                            features="pixel", deadline=float("inf"))
    assert out.counterexample is None and not out.timed_out
    remaining = {tuple(t) for t in out.remaining.tolist()}
    proven = [t for t in decomposed if t not in remaining]
    assert len(proven) == out.proven > 0
    assert all(decomposed[t] + shift > -1e-6 for t in proven)
    assert any(decomposed[t] + shift < 0 for t in remaining if t in decomposed)
    assert {t for t in exact if _kind(ov, t) >= 2} <= remaining


def test_sampled_counterexample_on_a_weak_input() -> None:
    """With the label's bias lowered, sampled single-pixel minima combine into a real flip of
    at most three separable pixels (re-checked); with it raised, none is claimed."""
    shape = (1, 5, 5)
    _, x0, label, ov = _setup(6, 2)
    for shift, expect in ((-0.6, True), (5.0, False)):
        m = one_conv(6)
        with torch.no_grad():
            z0 = m(x0.unsqueeze(0))[0]
            m[-1].bias[label] += shift - float(z0[label] - z0[1 - label])  # clean margin = shift
        t = resolve(m, shape)
        out = triples.certify_triples_separable(t, x0, label, ov, CertifySettings(method="crown"), features="pixel",
                                                deadline=float("inf"))
        assert (out.counterexample is not None) is expect
        if expect:
            x, subset = out.counterexample, out.subset
            assert x is not None and subset is not None and 1 <= len(subset) <= 3
            assert set((x != x0).any(0).flatten().nonzero().flatten().tolist()) <= set(subset)
            assert int(m(x.unsqueeze(0)).argmax()) != label
