"""CertifySettings: validated once, passed whole; keywords of the entry points still work."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _certify_helpers import mlp

from l0tre.certify import (
    LEVEL_SETTINGS,
    CertifySettings,
    Intermediate,
    Method,
    Split,
    certify_boxes,
    certify_boxes_bab,
    certify_level,
    certify_subsets,
    subset_boxes,
)
from l0tre.certify.bounds import LEVEL_METHODS
from l0tre.engine.certified import CertifyMode, CertifyOptions


def test_strings_become_choices_and_defaults_hold() -> None:
    s = CertifySettings(method="IBP", intermediate="crown", split="smear")  # type: ignore[arg-type]
    assert s.method is Method.IBP and s.intermediate is Intermediate.CROWN and s.split is Split.SMEAR
    assert CertifySettings().method is Method.CROWN and LEVEL_SETTINGS.method is Method.HYBRID
    assert (LEVEL_SETTINGS.time_limit, LEVEL_SETTINGS.max_depth) == (300.0, 12)
    assert LEVEL_METHODS == ("auto", "ibp", "forward", "crown", "hybrid")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.method = Method.CROWN  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "error", "needle"),
    [
        ({"method": "milp"}, ValueError, "method: expected one of 'auto', 'ibp'"),
        ({"intermediate": "hybrid"}, ValueError, "intermediate: expected one of"),
        ({"split": "random"}, ValueError, "split: expected one of"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 2.5}, TypeError, "batch_size"),
        ({"max_memory": -1}, ValueError, "max_memory"),
        ({"time_limit": 0}, ValueError, "time_limit"),
        ({"time_limit": float("inf")}, ValueError, "time_limit"),
        ({"margin_tol": float("nan")}, ValueError, "margin_tol"),
        ({"margin_tol": "0"}, TypeError, "margin_tol"),
        ({"max_depth": -1}, ValueError, "max_depth"),
        ({"max_nodes": 0}, ValueError, "max_nodes"),
        ({"attack_steps": True}, TypeError, "attack_steps"),
        ({"use_bab": 1}, TypeError, "use_bab"),
        ({"block": 0}, ValueError, "block"),
        ({"jump": -0.5}, ValueError, "jump"),
        ({"dtype": torch.int64}, TypeError, "dtype"),
    ],
)
def test_every_field_is_validated(changes: dict[str, object], error: type[Exception], needle: str) -> None:
    with pytest.raises(error, match=needle):
        CertifySettings.build(**changes)


def test_build_applies_keywords_on_a_base() -> None:
    s = CertifySettings.build(LEVEL_SETTINGS, method="auto", bab_max_depth=5, bab_max_nodes=7, time_limit=3)
    assert (s.method, s.max_depth, s.max_nodes, s.time_limit) == (Method.AUTO, 5, 7, 3.0)
    assert s.batch_size == LEVEL_SETTINGS.batch_size and s.jump == LEVEL_SETTINGS.jump
    with pytest.raises(TypeError, match="unexpected certification setting 'max_dept'"):
        CertifySettings.build(max_dept=3)


def test_entry_points_take_settings_or_keywords_alike() -> None:
    shape = (1, 3, 3)
    model = mlp(7, shape).double()
    x0 = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    label = int(model(x0.unsqueeze(0)).argmax())
    subsets = torch.tensor([[0, 1], [2, 5], [4, 8]])
    lo, hi = subset_boxes(x0, subsets)
    s = CertifySettings(method=Method.IBP, batch_size=2)
    a = certify_subsets(model, x0, label, subsets, settings=s)
    b = certify_subsets(model, x0, label, subsets, method="ibp", batch_size=2)
    assert torch.equal(a.margin_lb, b.margin_lb) and a.method == b.method == "ibp"
    assert torch.equal(certify_boxes(model, lo, hi, label, settings=s).margin_lb, a.margin_lb)
    bab = CertifySettings(max_depth=4, max_nodes=50, time_limit=20.0)
    r1 = certify_boxes_bab(model, lo, hi, label, settings=bab)
    r2 = certify_boxes_bab(model, lo, hi, label, max_depth=4, max_nodes=50, time_limit=20)
    assert r1.status == r2.status and r1.nodes == r2.nodes
    lvl = dataclasses.replace(LEVEL_SETTINGS, method=Method.CROWN, time_limit=30.0)
    l1 = certify_level(model, x0, label, 1, settings=lvl)
    l2 = certify_level(model, x0, label, 1, method="crown", time_limit=30)
    assert (l1.status, l1.boxes_tried, l1.bab_nodes) == (l2.status, l2.boxes_tried, l2.bab_nodes)
    with pytest.raises(TypeError, match="unexpected certification setting"):
        certify_level(model, x0, label, 1, bab_depth=3)


def test_engine_options_build_the_level_settings() -> None:
    opts = CertifyOptions.build(True, "crown", 12)
    assert opts.mode is CertifyMode.ON and opts.method is Method.CROWN
    assert opts.settings == dataclasses.replace(LEVEL_SETTINGS, method=Method.CROWN, time_limit=12.0)
    assert CertifyOptions(CertifyMode.ONLY, "auto", 5.0).method is Method.AUTO  # plain strings are parsed
    with pytest.raises(ValueError, match=r"certify_method: expected one of \('auto', 'ibp'"):
        CertifyOptions.build(True, "milp")
    with pytest.raises(ValueError, match="certify_time_limit: expected a positive number of seconds"):
        CertifyOptions.build(True, "auto", 0)
    with pytest.raises(ValueError, match="certify: expected one of 'off', 'on', 'only'"):
        CertifyOptions.build("yes")
