"""Bounds, certificates and adversarial examples equal those of the code before the package
renovation (``before_renovation.pt``, written by ``make_golden.py`` from that code)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import l0tre

from .cases import Case, attack_cases, certify_cases, engine_cases

GOLDEN = torch.load(Path(__file__).with_name("before_renovation.pt"), weights_only=True)


def _check(name: str, got: dict[str, torch.Tensor]) -> None:
    want = GOLDEN[name]
    assert set(want) <= set(got)
    for key, value in want.items():
        assert torch.equal(got[key].cpu(), value), f"{name}.{key} differs from the pre-renovation result"


@pytest.mark.parametrize("name", sorted(engine_cases()))
def test_engine_results_unchanged(name: str) -> None:
    model, x, kwargs = engine_cases()[name]
    r = l0tre.evaluate(model, x, **kwargs)
    _check(name, {"lower": r.lower, "upper": r.upper, "found": r.found, "adversarial": r.adversarial,
                  "adversarial_label": r.adversarial_label})


@pytest.mark.parametrize("name", sorted(certify_cases()))
def test_certified_results_unchanged(name: str) -> None:
    model, x, kwargs = certify_cases()[name]
    r = l0tre.evaluate(model, x, **kwargs)
    assert r.certified_lower is not None
    _check(name, {"lower": r.lower, "upper": r.upper, "certified_lower": r.certified_lower})


@pytest.mark.parametrize("name", sorted(attack_cases()))
def test_attack_results_unchanged(name: str) -> None:
    case: Case = attack_cases()[name]
    model, x, kwargs = case
    a = l0tre.attack(model, x, **kwargs)
    _check(name, {"x_adv": a.x_adv, "success": a.success, "l0": a.l0})
