"""bfloat16 screening of the level-1 rows: float32 re-checks keep flips and bounds exact, and a
broken bfloat16 copy falls back to float32 instead of changing them."""

from __future__ import annotations

import pytest
import torch

from l0tre.apps.saliency import saliency
from l0tre.execution import precision
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
    monkeypatch.setattr(precision, "LowPrecisionModel", _Sabotaged)
    s = saliency(net, x, precision="bfloat16", mode="eager", incremental=False)
    assert s.rechecked > 0
    assert torch.equal(s.flips, ref.flips) and torch.equal(s.lower, ref.lower) and torch.equal(s.upper, ref.upper)
    # every row the lie could move across the boundary was recomputed: the map is float32 there
    near = ref.sensitivity >= ref.base_score.view(-1, 1, 1) - 6.0
    torch.testing.assert_close(s.sensitivity[near], ref.sensitivity[near], atol=1e-5, rtol=1e-5)


def test_auto_is_float32_on_a_cpu() -> None:
    net = tiny_net(2, 3)
    assert saliency(net, _x(2, 1), precision="auto").precision == "float32"


def _residual_net(seed: int) -> torch.nn.Module:
    """A small residual net (the graph chain's kind) with logits of a few units' spread."""
    from tests.engine.test_graph_chain import _prepared, _resnet

    net = _prepared(_resnet(False), seed).float()
    with torch.no_grad():
        net[-1].weight.mul_(30.0)
    return net


def _spy_chain(monkeypatch: pytest.MonkeyPatch, lie: float) -> list[int]:
    """Count the rows the copy's chain computes, and make it raise class 0's logit by ``lie``."""
    rows: list[int] = []
    build = LowPrecisionModel.chain

    def chain(self: LowPrecisionModel, shape: tuple[int, ...], windows: int = 1) -> object:
        inc = build(self, shape, windows)
        if inc is None or getattr(inc, "_spied", False):
            return inc
        real = inc.outputs

        def outputs(*args: object, **kw: object) -> torch.Tensor:
            out = real(*args, **kw).clone()  # type: ignore[arg-type]
            rows.append(int(out.shape[0]))
            out[:, 0] += lie
            return out

        object.__setattr__(inc, "outputs", outputs)
        object.__setattr__(inc, "_spied", True)
        return inc

    monkeypatch.setattr(LowPrecisionModel, "chain", chain)
    return rows


@pytest.mark.parametrize("lie", [0.0, 1.0, 3.0])
def test_the_screen_through_the_copys_chain_keeps_flips_and_bounds(monkeypatch: pytest.MonkeyPatch,
                                                                   lie: float) -> None:
    """bfloat16 rows from the copy's incremental chain (honest, or lying by 1 or 3 logits): flips and
    the upper bound are those of float32, and near the boundary the map is float32."""
    net = _residual_net(4)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    kw = {"pixels": "top:20", "mode": "eager", "incremental": True}
    ref = saliency(net, x, precision="float32", **kw)
    rows = _spy_chain(monkeypatch, lie)
    s = saliency(net, x, precision="bfloat16", **kw)
    assert sum(rows) >= s.evaluations - 2 * 27  # the level-1 rows came from the copy's chain
    assert torch.equal(s.flips, ref.flips) and torch.equal(s.upper, ref.upper)
    assert s.rechecked > 0
    if lie <= 1.0:  # tol ≈ 2 × the error seen < the margins here (≈ 3.2): the screen saves rows.
        # (With a 3-logit lie the tolerance may cover every row, depending on which rows the probes
        # hit, i.e. on the rows per call: then all are exact, which is safe but saves nothing.)
        assert s.rechecked < s.evaluations
    near = ref.sensitivity >= ref.base_score.view(-1, 1, 1) - 2 * lie - 0.5
    torch.testing.assert_close(s.sensitivity[near], ref.sensitivity[near], atol=1e-4, rtol=1e-4)
    far = ref.evaluated & ~near
    torch.testing.assert_close(s.sensitivity[far], ref.sensitivity[far], atol=lie + 0.3, rtol=0.05)
