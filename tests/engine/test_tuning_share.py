"""The execution-mode tuning of a t = 1 run costs at most ``TUNING_SHARE`` of the run's
sensitivity pass (one image of a large network must not spend longer measuring than working),
and never changes a result."""

from __future__ import annotations

import itertools

import pytest
import torch

import l0tre
from l0tre.execution import modes, plan

from .test_oracle import random_cnn


def _work(x: torch.Tensor, grid: tuple[float, ...]) -> int:
    """Level-1 grid points counted independently: per input and pixel, the colours (one value
    per channel from ``grid``) that differ from the pixel."""
    n, c, h, w = x.shape
    total = 0
    for i, r, col in itertools.product(range(n), range(h), range(w)):
        pixel = tuple(float(v) for v in x[i, :, r, col])
        total += sum(1 for colour in itertools.product(grid, repeat=c) if colour != pixel)
    return total


def _count_tuning(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Rows of forward passes run by the tuner's measurements (and calls of the chain measurement)."""
    seen = {"rows": 0, "chain_calls": 0}
    time_forward, pays = modes.time_forward, plan.incremental_pays

    def counting_forward(model: l0tre.Classifier, x: torch.Tensor, repeats: int = 2) -> float:
        seen["rows"] += x.shape[0] * (1 + repeats)  # one warm-up call and ``repeats`` timed ones
        return time_forward(model, x, repeats)

    def counting_pays(*args: object, **kw: object) -> bool:
        seen["chain_calls"] += 1
        return pays(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(modes, "time_forward", counting_forward)
    monkeypatch.setattr(plan, "incremental_pays", counting_pays)
    monkeypatch.setenv("L0TRE_TUNING_CACHE", "off")
    return seen


@pytest.mark.parametrize(("n", "size"), [(1, 6), (3, 8), (4, 12)])
def test_t1_tuning_is_a_small_share_of_the_work(monkeypatch: pytest.MonkeyPatch, n: int, size: int) -> None:
    shape = (1, size, size)
    net = random_cnn(shape, 4, 3).float()
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(size))
    seen = _count_tuning(monkeypatch)
    auto = l0tre.evaluate(l0tre.Classifier(net), x, t_max=1)
    work = _work(x, (0.0, 0.5, 1.0))
    assert seen["rows"] <= modes.TUNING_SHARE * work
    if modes.TUNING_SHARE * work < 16 * plan.MIN_MEASURE_ROWS:
        assert seen["chain_calls"] == 0  # too little work to measure whether the chain pays
    eager = l0tre.evaluate(l0tre.Classifier(net), x, t_max=1, mode="eager", incremental=False)
    for name in ("lower", "upper", "found", "adversarial", "adversarial_label"):
        assert torch.equal(getattr(auto, name), getattr(eager, name)), name


def test_without_a_known_work_size_the_tuning_is_not_shortened(monkeypatch: pytest.MonkeyPatch) -> None:
    """The counterpart (the bound above is not vacuous): a t = 2 run measures in full, far above
    the share of its level-1 work."""
    shape = (1, 6, 6)
    net = random_cnn(shape, 4, 3).float()
    x = torch.rand(1, *shape, generator=torch.Generator().manual_seed(6))
    seen = _count_tuning(monkeypatch)
    l0tre.evaluate(l0tre.Classifier(net), x, t_max=2)
    assert seen["rows"] > modes.TUNING_SHARE * _work(x, (0.0, 0.5, 1.0))


def test_a_shortened_decision_serves_smaller_runs_of_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run measures once; a later run of the same classifier with less work reuses the decision
    (no measurement), one with more work measures again; too little work measures nothing."""
    shape = (1, 24, 24)
    net = random_cnn(shape, 4, 3).float()
    x = torch.rand(8, *shape, generator=torch.Generator().manual_seed(12))
    seen = _count_tuning(monkeypatch)
    clf = l0tre.Classifier(net)
    l0tre.evaluate(clf, x[:6], t_max=1)
    first = seen["rows"]
    assert first > 0
    # less work, but enough that it would measure on its own (its mode probe has >= 16 rows)
    assert modes.TUNING_SHARE * _work(x[:5], (0.0, 0.5, 1.0)) / 2 // 6 >= modes.MIN_PROBE_ROWS
    l0tre.evaluate(clf, x[:5], t_max=1)  # reused
    assert seen["rows"] == first
    l0tre.evaluate(clf, x, t_max=1)  # more work: measured again
    assert seen["rows"] > first
    seen["rows"] = 0
    tiny = l0tre.Classifier(random_cnn((1, 4, 4), 4, 3).float())
    l0tre.evaluate(tiny, torch.rand(1, 1, 4, 4), t_max=1)  # 16 pixels × 2 colours: nothing to measure on
    assert seen["rows"] == 0 and tiny.mode == "eager"
