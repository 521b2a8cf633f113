"""Certified lower bounds inside the engine: never above the grid bound or the truth."""

from __future__ import annotations

import pytest
import torch

import l0tre

from .oracle import brute_force_dm
from .test_oracle import random_mlp, trained_mlp


@pytest.mark.parametrize("make,seed", [(trained_mlp, 0), (random_mlp, 3), (random_mlp, 4)])
def test_certified_lower_is_sound_and_below_grid(make: object, seed: int) -> None:
    shape = (1, 3, 3)
    model = make(shape, seed) if make is trained_mlp else make(shape, 3, seed)  # type: ignore[operator]
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    truth = torch.tensor([brute_force_dm(model, xi, 2)[0] for xi in x])
    res = l0tre.evaluate(model, x, epsilon=0.5, t_max=9, certify=True)
    assert res.certified_lower is not None
    assert bool((res.certified_lower <= res.lower).all())
    assert bool((res.certified_lower <= truth).all())
    assert torch.equal(res.lower, truth) and torch.equal(res.upper, truth)
    kinds = res.lower_kind
    for i in range(4):
        assert kinds[i] == ("certified" if int(res.certified_lower[i]) == int(res.lower[i]) else "grid")
    # every certified level survives dense sampling of real values on random t-subsets
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        ref = model(x).argmax(1)
        for i in range(4):
            t = int(res.certified_lower[i])
            if t == 0:
                continue
            for _ in range(50):
                feats = torch.randperm(9, generator=gen)[:t]
                xs = x[i].repeat(200, 1, 1, 1)
                xs.view(200, -1)[:, feats] = torch.rand(200, t, generator=gen, dtype=torch.float64)
                assert bool((model(xs).argmax(1) == ref[i]).all())


def test_certify_only_reports_certified_lower_without_search() -> None:
    model = trained_mlp((1, 3, 3), 0)
    x = torch.rand(3, 1, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    full = l0tre.evaluate(model, x, epsilon=0.5, t_max=3, certify=True)
    only = l0tre.evaluate(model, x, epsilon=0.5, t_max=3, certify="only")
    assert torch.equal(only.certified_lower, full.certified_lower)
    assert torch.equal(only.lower, only.certified_lower)
    assert bool((only.upper == 9).all()) and not bool(only.found.any())
    d = only.to_dict()
    assert all("certified_lower" in row for row in d["inputs"])
    assert d["global"]["certified_lower"] == pytest.approx(float(only.certified_lower.double().mean()))


def test_certify_guards() -> None:
    model = trained_mlp((1, 3, 3), 0)
    x = torch.rand(1, 1, 3, 3, dtype=torch.float64)
    msg = "certify: expected one of 'off', 'on', 'only' \\(or True, False, None\\), got 'yes'"
    with pytest.raises(ValueError, match=msg):
        l0tre.evaluate(model, x, certify="yes")
    with pytest.raises(ValueError, match="certify_time_limit: expected a positive number of seconds"):
        l0tre.evaluate(model, x, certify=True, certify_time_limit=0)
    expected = r"certify_method: expected one of \('auto', 'ibp', 'forward', 'crown', 'hybrid'\), got 'milp'"
    with pytest.raises(ValueError, match=expected):
        l0tre.evaluate(model, x, certify=True, certify_method="milp")
    with pytest.raises(ValueError, match="certify: needs a torch.nn.Module model"):
        l0tre.evaluate(lambda z: model(z.double()), x.float(), certify=True)


@pytest.mark.parametrize("bias,level,eps", [(2.0, 2, 0.5), pytest.param(4.5, 3, 1.0, marks=pytest.mark.slow)])
def test_certified_levels_two_and_three_on_a_conv_head_model(bias: float, level: int, eps: float) -> None:
    """conv → ReLU → conv → ReLU → linear on 5×5: level 2 goes through the separable route
    (pairs that no nonlinearity mixes), level 3 through the component route; certified
    subsets survive dense sampling."""
    g = torch.Generator().manual_seed(5)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 2), torch.nn.ReLU(), torch.nn.Conv2d(3, 3, 2), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(27, 2),
    ).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    x = torch.rand(6, 1, 5, 5, generator=g, dtype=torch.float64)
    with torch.no_grad():
        model[-1].bias[0] += bias  # a class-0 bias: inputs robust at t = level
        ref = model(x).argmax(1)
    res = l0tre.evaluate(model, x, epsilon=eps, t_max=3, certify=True)
    assert res.certified_lower is not None
    assert bool((res.certified_lower <= res.lower).all())
    assert int(res.certified_lower.max()) >= level
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for i in range(6):
            t = int(res.certified_lower[i])  # 3: through the component route of level 3
            if t < 2:
                continue
            for _ in range(60):
                feats = torch.randperm(25, generator=gen)[:t]
                xs = x[i].repeat(300, 1, 1, 1)
                xs.view(300, -1)[:, feats] = torch.rand(300, t, generator=gen, dtype=torch.float64)
                assert bool((model(xs).argmax(1) == ref[i]).all())
