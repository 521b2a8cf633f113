"""A work unit without any valid grid point (every member's only colours equal its value, as
with a one-colour palette) is the empty result, the neutral element of ``merge_units``."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

import l0tre
from l0tre.engine.features import FeatureKind, FeatureSpace
from l0tre.engine.grid import valid_colours
from l0tre.engine.sensitivity import LevelContext, UnitResult, empty_unit, evaluate_unit, merge_units
from l0tre.engine.subspaces import binomial_table
from l0tre.execution.incremental import IncrementalPrefix
from l0tre.objectives import Misclassification

from .test_oracle import random_cnn


def _equal(a: UnitResult, b: UnitResult) -> None:
    for f in fields(UnitResult):
        assert torch.equal(getattr(a, f.name), getattr(b, f.name)), f.name


@pytest.mark.parametrize("incremental", [False, True])
@pytest.mark.parametrize("t", [1, 2])
def test_a_unit_without_valid_colours_is_empty(incremental: bool, t: int) -> None:
    shape = (1, 5, 5)
    net = random_cnn(shape, 4, 3)
    clf = l0tre.Classifier(net)
    x0 = torch.rand(3, *shape, generator=torch.Generator().manual_seed(4))
    x0[:, :, 0, :] = 0.0  # features 0..4 already hold the palette's only colour
    space = FeatureSpace(FeatureKind.PIXEL, shape)
    palette = torch.zeros(1, 1)  # one baseline colour: 0
    valid = valid_colours(space.values(x0), palette)
    assert not bool(valid[:, :5].any()) and bool(valid[:, 5:].all())
    ctx = LevelContext.build(space, palette, t, binomial_table(space.n, t))
    ref = Misclassification().reference(clf, x0)
    inc = IncrementalPrefix.build(clf, shape, windows=2) if incremental else None
    idx = torch.arange(3)

    def unit(r0: int, r1: int) -> UnitResult:
        return evaluate_unit(clf, Misclassification(), x0, ref, valid, idx, ctx, r0, r1, batch_size=7, k=4,
                             incremental=inc)

    empty_end = 5 if t == 1 else 10  # colex: the first C(5, t) subsets lie inside features 0..4
    _equal(unit(0, empty_end), empty_unit(idx, 4, torch.float32))
    # the empty unit is neutral: splitting a range at it changes nothing
    end = 11 if t == 1 else 28  # t = 2: ranks 20, 26, 27 ({5,6}, {5,7}, {6,7}) have valid points
    whole = unit(0, end)
    _equal(merge_units(unit(0, empty_end), unit(empty_end, end), 4), whole)
    assert int(whole.evaluations.sum()) > 0 and bool((whole.rank[:, 0] >= empty_end).all())
