"""bfloat16 screening of the level-1 rows: float32 re-checks keep flips and bounds exact, and a
broken bfloat16 copy falls back to float32 instead of changing them."""

from __future__ import annotations

import pytest
import torch

from l0tre.apps.saliency import core, saliency
from l0tre.execution.precision import LowPrecisionModel

from .oracle import tiny_net


def _x(seed: int, n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 5, 5, generator=torch.Generator().manual_seed(seed))


def test_bfloat16_screen_keeps_flips_and_bounds() -> None:
    net = tiny_net(2, 3)
    x = _x(2)
    ref = saliency(net, x, precision="float32")
    s = saliency(net, x, precision="bfloat16")
    assert s.precision == "bfloat16" and ref.precision == "float32"
    assert torch.equal(s.flips, ref.flips) and torch.equal(s.lower, ref.lower) and torch.equal(s.upper, ref.upper)
    torch.testing.assert_close(s.sensitivity, ref.sensitivity, atol=0.1, rtol=0.05)  # bfloat16 map values


class _Sabotaged(LowPrecisionModel):
    """A bfloat16 copy that lies: every logit of class 0 is raised by 3."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = super().__call__(x).clone()
        out[:, 0] += 3.0
        return out


@pytest.mark.parametrize("seed", [2, 5])
def test_a_sabotaged_copy_falls_back_to_float32(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    net = tiny_net(seed, 3)
    x = _x(seed)
    ref = saliency(net, x, precision="float32", mode="eager", incremental=False)
    monkeypatch.setattr(core, "LowPrecisionModel", _Sabotaged)
    s = saliency(net, x, precision="bfloat16", mode="eager", incremental=False)
    assert s.rechecked > 0
    assert torch.equal(s.flips, ref.flips) and torch.equal(s.lower, ref.lower) and torch.equal(s.upper, ref.upper)
    # every row the lie could move across the boundary was recomputed: the map is float32 there
    near = ref.sensitivity >= ref.base_score.view(-1, 1, 1) - 6.0
    torch.testing.assert_close(s.sensitivity[near], ref.sensitivity[near], atol=1e-5, rtol=1e-5)


def test_auto_is_float32_on_a_cpu() -> None:
    net = tiny_net(2, 3)
    assert saliency(net, _x(2, 1), precision="auto").precision == "float32"
