"""Engine bounds vs brute-force d_m^grid on tiny random and trained networks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import l0tre

from .oracle import brute_force_dm


def random_mlp(shape: tuple[int, int, int], classes: int, seed: int, hidden: int = 12) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    d = shape[0] * shape[1] * shape[2]
    m = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, classes)).double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 1.5)
    return m.eval()


def random_cnn(shape: tuple[int, int, int], classes: int, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    m = nn.Sequential(nn.Conv2d(c, 4, 2), nn.ReLU(), nn.Flatten(),
                      nn.Linear(4 * (h - 1) * (w - 1), classes)).double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return m.eval()


def trained_mlp(shape: tuple[int, int, int], seed: int) -> nn.Module:
    """A tiny net trained on a synthetic task: class = which half of the image is brighter."""
    torch.manual_seed(seed)
    c, h, w = shape
    x = torch.rand(256, c, h, w, dtype=torch.float64)
    left = x[..., : w // 2].mean((1, 2, 3))
    right = x[..., w // 2 :].mean((1, 2, 3))
    y = (left > right).long()
    m = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    return m.eval()


def check_against_oracle(model: nn.Module, x: torch.Tensor, epsilon: float, features: str = "pixel",
                         batch_size: int = 509) -> None:
    steps = round(1 / epsilon)
    truth = torch.tensor([brute_force_dm(model, xi, steps, features)[0] for xi in x])
    n = brute_force_dm(model, x[0], steps, features)[1]
    snaps = list(l0tre.evaluate_iter(model, x, epsilon=epsilon, t_max=n, features=features,
                                     report_every=1e-9, batch_size=batch_size))
    assert snaps, "no snapshot"
    prev_lower = torch.zeros_like(truth)
    prev_upper = torch.full_like(truth, n)
    for s in snaps:
        assert bool((s.lower <= truth).all()), (s.lower, truth)
        assert bool((truth <= s.upper).all()), (s.upper, truth)
        assert bool((s.lower >= prev_lower).all()) and bool((s.upper <= prev_upper).all())
        prev_lower, prev_upper = s.lower, s.upper
    final = snaps[-1]
    assert final.stopped in ("converged", "t_max")
    assert torch.equal(final.lower, truth) and torch.equal(final.upper, truth)
    check_adversarials(model, x, final)


def check_adversarials(model: nn.Module, x: torch.Tensor, res: l0tre.Result) -> None:
    with torch.no_grad():
        pred0 = model(x.to(torch.float64) if next(model.parameters()).dtype == torch.float64 else x).argmax(1)
        adv = res.adversarial.to(next(model.parameters()).dtype)
        pred = model(adv).argmax(1)
    c = x.shape[1]
    for i in range(x.shape[0]):
        if bool(res.found[i]):
            assert int(pred[i]) != int(pred0[i])
            assert int(pred[i]) == int(res.adversarial_label[i])
            diff = (adv[i] != x[i].to(adv.dtype))
            l0 = int(diff.any(0).sum()) if res.features == "pixel" else int(diff.sum())
            assert l0 == int(res.upper[i]) + 1
            assert float(adv[i].min()) >= 0 and float(adv[i].max()) <= 1
        else:
            assert int(res.upper[i]) == res.n_features
            assert torch.equal(adv[i], x[i].to(adv.dtype))
    assert c == res.adversarial.shape[1]


@pytest.mark.parametrize(
    "shape,epsilon,features",
    [((1, 3, 3), 0.5, "pixel"), ((3, 2, 2), 0.5, "pixel"), ((1, 2, 4), 0.25, "pixel"),
     ((2, 2, 2), 0.5, "element")],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_mlp_matches_oracle(shape: tuple[int, int, int], epsilon: float, features: str, seed: int) -> None:
    model = random_mlp(shape, 3, seed)
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64)
    check_against_oracle(model, x, epsilon, features)


@pytest.mark.parametrize("shape,epsilon", [((1, 3, 3), 0.5), ((3, 2, 2), 0.5)])
def test_random_cnn_matches_oracle(shape: tuple[int, int, int], epsilon: float) -> None:
    model = random_cnn(shape, 4, 3)
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    check_against_oracle(model, x, epsilon)


@pytest.mark.parametrize("shape,epsilon", [((1, 3, 3), 0.5), ((1, 2, 4), 0.25), ((3, 2, 2), 0.5)])
def test_trained_mlp_matches_oracle(shape: tuple[int, int, int], epsilon: float) -> None:
    model = trained_mlp(shape, 0)
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    check_against_oracle(model, x, epsilon)


def test_grid_valued_inputs_skip_original_points() -> None:
    """Inputs already on the grid: points equal to the original are skipped, bounds still exact."""
    model = random_mlp((1, 3, 3), 3, 11)
    x = torch.randint(0, 3, (4, 1, 3, 3), generator=torch.Generator().manual_seed(1)).double() / 2
    check_against_oracle(model, x, 0.5)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), hidden=st.integers(2, 10), classes=st.integers(2, 4),
       channels=st.sampled_from([1, 2]))
def test_property_random_networks(seed: int, hidden: int, classes: int, channels: int) -> None:
    shape = (channels, 2, 2)
    model = random_mlp(shape, classes, seed, hidden)
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    check_against_oracle(model, x, 0.5)
