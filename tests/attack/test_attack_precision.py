"""``l0tre.attack`` with bfloat16 search evaluations (float32 re-checks and verification)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from l0tre.apps.attack import attack, core
from l0tre.execution.precision import LowPrecisionModel


def conv_net(seed: int, channels: int = 3, side: int = 6, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * side * side, 16), nn.ReLU(), nn.Linear(16, classes),
    ).eval()


def inputs(seed: int, n: int, shape: tuple[int, int, int] = (3, 6, 6)) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("effort", ["fast", "default"])
def test_bf16_examples_verify_in_float32_and_are_batch_invariant(effort: str) -> None:
    model = conv_net(0)
    x = inputs(1, 9)
    ref = attack(model, x, effort=effort, precision="bfloat16")
    assert ref.config["precision"] == "bfloat16"
    assert 0 < ref.low_precision_evaluations < ref.evaluations
    assert bool(ref.success.all())
    with torch.no_grad():
        pred0 = model(x).argmax(1)
        pred = model(ref.x_adv).argmax(1)  # float32
    assert bool((pred != pred0).all())
    assert torch.equal(ref.l0, (ref.x_adv != x).any(dim=1).flatten(1).sum(1))
    for other in (attack(model, x, effort=effort, precision="bfloat16"),
                  attack(model, x, effort=effort, precision="bfloat16", batch_size=5, shard_size=4)):
        assert torch.equal(other.x_adv, ref.x_adv)


def test_float32_precision_uses_no_low_precision_rows() -> None:
    model = conv_net(2)
    res = attack(model, inputs(3, 4), effort="fast", precision="float32")
    assert res.config["precision"] == "float32" and res.low_precision_evaluations == 0


class _Sabotaged(LowPrecisionModel):
    """Honest on its first call (the calibration), then it swaps the two largest outputs of every
    row: every edit looks adversarial with a wide margin, none of them is."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = super().__call__(x)
        self.calls += 1
        if self.calls == 1:
            return out
        top = out.topk(2, dim=1).indices
        swapped = out.clone()
        rows = torch.arange(out.shape[0])
        swapped[rows, top[:, 0]] = out[rows, top[:, 1]]
        swapped[rows, top[:, 1]] = out[rows, top[:, 0]]
        return swapped


def test_examples_that_fail_float32_verification_are_searched_again(monkeypatch: pytest.MonkeyPatch) -> None:
    model = conv_net(4)
    x = inputs(5, 6)
    exact = attack(model, x, effort="fast", precision="float32")
    monkeypatch.setattr(core, "LowPrecisionModel", _Sabotaged)
    res = attack(model, x, effort="fast", precision="bfloat16")
    # every low-precision "success" failed verification; the float32 search took over
    assert res.researched == x.shape[0]
    assert torch.equal(res.success, exact.success)
    assert torch.equal(res.x_adv, exact.x_adv)
    assert torch.equal(res.l0, exact.l0)
