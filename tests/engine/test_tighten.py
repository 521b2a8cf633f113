"""Tightening (``l0tre.engine.tighten.tighten``): checked by brute force with the bare module.

Every result must still be adversarial, change a subset of the features the given example
changed (each to the example's value), and be locally minimal: reverting any one remaining
change restores the label. A plain-python greedy (lowest margin among the adversarial single
reverts, ties to the lowest feature) gives the exact expected example and evaluation count.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import l0tre
from l0tre.engine.features import FeatureKind, FeatureSpace
from l0tre.engine.tighten import tighten
from l0tre.objectives import Misclassification

from .test_oracle import random_cnn, random_mlp
from .test_sensitivity import exact_mlp, feature_cells, net_values, quarter_inputs


def features_of(shape: tuple[int, int, int], kind: str) -> list[list[tuple[int, int, int]]]:
    c, h, w = shape
    return [feature_cells(shape, kind, f) for f in range(h * w if kind == "pixel" else c * h * w)]


def changed_features(x: torch.Tensor, x0: torch.Tensor, cells: list[list[tuple[int, int, int]]]) -> list[int]:
    return [f for f, cl in enumerate(cells) if any(float(x[c]) != float(x0[c]) for c in cl)]


def reverted(x: torch.Tensor, x0: torch.Tensor, cl: list[tuple[int, int, int]]) -> torch.Tensor:
    y = x.clone()
    for c in cl:
        y[c] = x0[c]
    return y


def label(net: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(net(x.unsqueeze(0))[0].argmax())


def greedy(net: nn.Module, x0: torch.Tensor, x_adv: torch.Tensor, kind: str) -> tuple[torch.Tensor, int]:
    """The documented algorithm, one image and one revert at a time."""
    cells = features_of(tuple(x0.shape), kind)  # type: ignore[arg-type]
    j = label(net, x0)
    x, evaluations = x_adv.clone(), 0
    while True:
        best: tuple[float, int] | None = None
        for f in changed_features(x, x0, cells):
            margin, _, success, _ = net_values(net, reverted(x, x0, cells[f]), j)
            evaluations += 1
            if success and (best is None or (margin, f) < best):
                best = (margin, f)
        if best is None:
            return x, evaluations
        x = reverted(x, x0, cells[best[1]])


def adversarial_examples(
    net: nn.Module, x0: torch.Tensor, kind: str, changes: int, seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each input, a random adversarial example changing ``changes`` features to grid values
    (inputs without one in a few hundred draws are dropped)."""
    cells = features_of(tuple(x0.shape[1:]), kind)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(seed)
    keep, advs = [], []
    for i, x in enumerate(x0):
        j = label(net, x)
        for _ in range(300):
            y = x.clone()
            for f in torch.randperm(len(cells), generator=g)[:changes].tolist():
                for c in cells[f]:
                    y[c] = float(torch.randint(0, 3, (1,), generator=g)) / 2
            if label(net, y) != j:
                keep.append(i)
                advs.append(y)
                break
    return x0[keep], torch.stack(advs)


def run(net: nn.Module, x0: torch.Tensor, x_adv: torch.Tensor, kind: str, batch_size: int,
        incremental: bool = False) -> tuple[torch.Tensor, int]:
    clf = l0tre.Classifier(net)
    shape = tuple(x0.shape[1:])
    space = FeatureSpace(FeatureKind(kind), shape)  # type: ignore[arg-type]
    inc = None
    if incremental:
        from l0tre.execution.incremental import IncrementalPrefix

        inc = IncrementalPrefix.build(clf, shape)  # type: ignore[arg-type]
        assert inc is not None
    obj = Misclassification()
    return tighten(clf, obj, space, x0, obj.reference(clf, x0), x_adv, batch_size=batch_size, incremental=inc)


def check_tightened(net: nn.Module, x0: torch.Tensor, x_adv: torch.Tensor, x_t: torch.Tensor, kind: str) -> None:
    cells = features_of(tuple(x0.shape[1:]), kind)  # type: ignore[arg-type]
    for a, adv, t in zip(x0, x_adv, x_t, strict=True):
        j = label(net, a)
        assert label(net, t) != j  # still adversarial
        kept = changed_features(t, a, cells)
        assert set(kept) <= set(changed_features(adv, a, cells))
        # every element is the original's or the example's: nothing new was invented
        assert bool(((t == a) | (t == adv)).all())
        for f in kept:  # locally minimal: no single revert keeps it adversarial
            assert label(net, reverted(t, a, cells[f])) == j, f


CASES = [
    # net, seed, shape, kind, changed features
    ("float", 0, (1, 3, 3), "pixel", 6),
    ("float", 1, (2, 3, 3), "pixel", 5),
    ("float", 2, (2, 2, 2), "element", 6),
    ("exact", 3, (1, 3, 3), "pixel", 6),  # exact arithmetic: equal margins are really equal
    ("exact", 4, (2, 2, 3), "element", 8),
]


@pytest.mark.parametrize(("net_kind", "seed", "shape", "kind", "changes"), CASES)
def test_tighten_matches_greedy_and_is_locally_minimal(
    net_kind: str, seed: int, shape: tuple[int, int, int], kind: str, changes: int,
) -> None:
    if net_kind == "exact":
        net, x = exact_mlp(shape, 3, seed), quarter_inputs(shape, 8, seed)
    else:
        net = random_mlp(shape, 3, seed)
        x = torch.rand(8, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x0, x_adv = adversarial_examples(net, x, kind, changes, seed)
    assert x0.shape[0] >= 3
    want = [greedy(net, a, adv, kind) for a, adv in zip(x0, x_adv, strict=True)]
    x_want = torch.stack([w[0] for w in want])
    cells = features_of(shape, kind)
    # not vacuous: something was reverted, and some results keep more than one change
    assert sum(len(changed_features(w, a, cells)) for w, a in zip(x_want, x0, strict=True)) < \
        sum(len(changed_features(v, a, cells)) for v, a in zip(x_adv, x0, strict=True))
    assert max(len(changed_features(w, a, cells)) for w, a in zip(x_want, x0, strict=True)) > 1
    for batch_size in (1, 4, 1000):
        x_t, evaluations = run(net, x0, x_adv, kind, batch_size)
        check_tightened(net, x0, x_adv, x_t, kind)
        assert torch.equal(x_t, x_want), batch_size
        assert evaluations == sum(w[1] for w in want)


def test_already_minimal_example_is_returned_unchanged() -> None:
    shape = (1, 3, 3)
    net = random_mlp(shape, 3, 0)
    x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0, x_adv = adversarial_examples(net, x, "pixel", 6, 0)
    x_min, _ = run(net, x0, x_adv, "pixel", 64)
    again, evaluations = run(net, x0, x_min, "pixel", 64)
    assert torch.equal(again, x_min)
    # one round: every remaining change tried once, none kept it adversarial
    cells = features_of(shape, "pixel")
    assert evaluations == sum(len(changed_features(m, a, cells)) for m, a in zip(x_min, x0, strict=True))


@pytest.mark.parametrize("kind", ["pixel", "element"])
def test_tighten_through_the_incremental_chain(kind: str) -> None:
    """With the incremental chain (CNN): the same checks, and the plain path's result."""
    shape = (2, 5, 5)
    net = random_cnn(shape, 4, 3)
    x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x0, x_adv = adversarial_examples(net, x, kind, 10, 4)
    assert x0.shape[0] >= 3
    plain, ev_plain = run(net, x0, x_adv, kind, 16)
    for batch_size in (1, 16, 1000):
        fast, ev_fast = run(net, x0, x_adv, kind, batch_size, incremental=True)
        check_tightened(net, x0, x_adv, fast, kind)
        assert torch.equal(fast, plain) and ev_fast == ev_plain
    want = [greedy(net, a, adv, kind) for a, adv in zip(x0, x_adv, strict=True)]
    assert torch.equal(plain, torch.stack([w[0] for w in want]))
    assert ev_plain == sum(w[1] for w in want)
