"""Upper bounds (``l0tre.engine.upper.accumulate``) against a direct loop over the prefixes.

The oracle walks the K slots of each input in order, applies every present slot's features that
are not set yet (earlier slots win), and runs the bare ``torch.nn.Module`` on each new prefix
image, one at a time; the first misclassified prefix is the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

import l0tre
from l0tre.engine.features import FeatureKind, FeatureSpace
from l0tre.engine.upper import accumulate
from l0tre.objectives import Misclassification

from .test_oracle import random_mlp
from .test_sensitivity import exact_mlp, feature_cells, quarter_inputs


@dataclass
class PrefixTruth:
    found: bool
    x_adv: torch.Tensor
    to_first: int  # prefixes evaluated up to and including the first adversarial one (all if none)
    prefixes: int  # distinct prefixes (slots that set at least one new feature)


def brute_force_prefixes(
    net: nn.Module, x0: torch.Tensor, kind: str, feats: torch.Tensor, vals: torch.Tensor, present: torch.Tensor,
    positions: list[int] | None = None,
) -> list[PrefixTruth]:
    shape = tuple(x0.shape[1:])
    out = []
    for i, x in enumerate(x0):
        with torch.no_grad():
            j = int(net(x.unsqueeze(0))[0].argmax())
        img = x.clone()
        done: set[int] = set()
        prefixes, to_first, found, x_adv = 0, None, False, x.clone()
        for slot in range(feats.shape[1]):
            if not bool(present[i, slot]):
                continue
            new = False
            for m, f in enumerate(feats[i, slot].tolist()):
                if f in done:
                    continue  # an earlier slot set it: it keeps that value
                done.add(f)
                new = True
                full = f if positions is None else positions[f]
                for cell, v in zip(feature_cells(shape, kind, full), vals[i, slot, m].tolist(), strict=True):
                    img[cell] = v
            if not new:
                continue  # the same image as the previous prefix
            prefixes += 1
            if found:
                continue
            with torch.no_grad():
                label = int(net(img.unsqueeze(0))[0].argmax())
            if label != j:
                found, x_adv, to_first = True, img.clone(), prefixes
        out.append(PrefixTruth(found, x_adv, prefixes if to_first is None else to_first, prefixes))
    return out


def random_slots(
    na: int, k: int, t: int, n: int, cf: int, seed: int, p_present: float = 0.75,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slots of distinct features (repeated across slots), grid values, some slots absent."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.stack([torch.stack([torch.randperm(n, generator=g)[:t] for _ in range(k)]) for _ in range(na)])
    vals = torch.randint(0, 3, (na, k, t, cf), generator=g).double() / 2
    present = torch.rand(na, k, generator=g) < p_present
    return feats, vals, present


def run(net: nn.Module, x0: torch.Tensor, kind: str, feats: torch.Tensor, vals: torch.Tensor, present: torch.Tensor,
        batch_size: int, positions: list[int] | None = None,
        gallop: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    clf = l0tre.Classifier(net)
    space = FeatureSpace(FeatureKind(kind), tuple(x0.shape[1:]))  # type: ignore[arg-type]
    if positions is not None:
        space = space.restrict(torch.tensor(positions))
    obj = Misclassification()
    ref = obj.reference(clf, x0)
    return accumulate(clf, obj, space, x0, ref, feats, vals, present, batch_size=batch_size, gallop=gallop)


CASES = [
    # net, seed, shape, kind, K, t, positions
    ("float", 0, (1, 3, 3), "pixel", 6, 1, None),
    ("float", 1, (1, 3, 3), "pixel", 5, 2, None),
    ("float", 2, (2, 2, 2), "pixel", 7, 2, None),
    ("float", 3, (2, 2, 2), "element", 6, 3, None),
    ("exact", 4, (1, 3, 3), "pixel", 8, 2, None),
    ("exact", 5, (2, 2, 3), "element", 6, 2, None),
    ("float", 6, (2, 3, 3), "pixel", 5, 2, [1, 2, 4, 6, 8]),  # a restricted feature space
]


def _case(net_kind: str, seed: int, shape: tuple[int, int, int], kind: str, k: int, t: int,
          positions: list[int] | None,
          na: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A CASES row: its net, ``na`` inputs, and random slots (feats, vals, present)."""
    if net_kind == "exact":
        net, x0 = exact_mlp(shape, 3, seed), quarter_inputs(shape, na, seed)
    else:
        net = random_mlp(shape, 3, seed)
        x0 = torch.rand(na, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    c, h, w = shape
    n = (h * w if kind == "pixel" else c * h * w) if positions is None else len(positions)
    return (net, x0, *random_slots(na, k, t, n, c if kind == "pixel" else 1, seed))


@pytest.mark.parametrize(("net_kind", "seed", "shape", "kind", "k", "t", "positions"), CASES)
def test_accumulate_matches_prefix_loop(
    net_kind: str, seed: int, shape: tuple[int, int, int], kind: str, k: int, t: int, positions: list[int] | None,
) -> None:
    na = 8
    net, x0, feats, vals, present = _case(net_kind, seed, shape, kind, k, t, positions, na)
    truth = brute_force_prefixes(net, x0, kind, feats, vals, present, positions)
    # the data exercise every rule: some found, some not, and absent slots change some answers
    assert any(tr.found for tr in truth) and not all(tr.found for tr in truth)
    everything = brute_force_prefixes(net, x0, kind, feats, vals, torch.ones_like(present), positions)
    assert any((a.found, a.to_first) != (b.found, b.to_first) or not torch.equal(a.x_adv, b.x_adv)
               for a, b in zip(truth, everything, strict=True))
    found_all = torch.tensor([tr.found for tr in truth])
    x_all = torch.stack([tr.x_adv for tr in truth])
    for batch_size in (1, 3, 10, na * k):
        found, x_adv, evaluations = run(net, x0, kind, feats, vals, present, batch_size, positions)
        assert torch.equal(found, found_all), batch_size
        assert torch.equal(x_adv, x_all), batch_size
        if batch_size == 1:  # one prefix per input per call: nothing evaluated after the first hit
            assert evaluations == sum(tr.to_first for tr in truth)
        elif batch_size >= na * k:  # one call holds every prefix of every input
            assert evaluations == sum(tr.prefixes for tr in truth)
        else:
            assert sum(tr.to_first for tr in truth) <= evaluations <= sum(tr.prefixes for tr in truth)


def test_earlier_slot_keeps_its_value_and_absent_slots_are_skipped() -> None:
    """A hand-made case: class 1 iff pixel 0 is bright and pixel 1 is dark."""

    class Detector(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = x.flatten(1)
            s = torch.minimum(f[:, 0], 1 - f[:, 1]) - 0.75
            return torch.stack([-s, s], 1)

    x0 = torch.full((3, 1, 1, 3), 0.5, dtype=torch.float64)
    # slots (t = 1): (pixel, value); slot 2 would finish the job with pixel 1 dark
    feats = torch.tensor([[[0], [1], [1], [2]]] * 3)
    vals = torch.tensor([[[[1.0]], [[1.0]], [[0.0]], [[0.0]]]] * 3, dtype=torch.float64)
    present = torch.tensor([[True, False, True, True],  # pixel 1 set to 0 by slot 2: adversarial
                            [True, True, True, True],  # slot 1 sets pixel 1 to 1 first: slot 2 changes nothing
                            [True, True, False, True]])  # never dark
    found, x_adv, evaluations = run(Detector(), x0, "pixel", feats, vals, present, batch_size=1)
    assert found.tolist() == [True, False, False]
    assert x_adv[0].flatten().tolist() == [1.0, 0.0, 0.5]
    assert torch.equal(x_adv[1:], x0[1:])
    # input 0: prefixes {0}, {0,1}; input 1: {0}, {0,1}, {0,1,2} (slot 2 adds nothing); input 2: the same
    assert evaluations == 2 + 3 + 3


@pytest.mark.parametrize(("net_kind", "seed", "shape", "kind", "k", "t", "positions"), CASES)
def test_galloping_finds_the_same_prefixes_within_twice_the_first_hit(
    monkeypatch: pytest.MonkeyPatch, net_kind: str, seed: int, shape: tuple[int, int, int], kind: str, k: int,
    t: int, positions: list[int] | None,
) -> None:
    """With ``gallop`` (first call: one prefix per input) the same first adversarial prefixes,
    and an input costs at most twice the prefixes up to its first hit, whatever the batch size;
    its count does not depend on the inputs searched with it (each input alone: the same sum)."""
    import l0tre.engine.upper as upper

    monkeypatch.setattr(upper, "GALLOP_START", 1)
    na = 8
    net, x0, feats, vals, present = _case(net_kind, seed, shape, kind, k, t, positions, na)
    truth = brute_force_prefixes(net, x0, kind, feats, vals, present, positions)
    found_all = torch.tensor([tr.found for tr in truth])
    x_all = torch.stack([tr.x_adv for tr in truth])
    cap = sum(min(tr.prefixes, 2 * tr.to_first) if tr.found else tr.prefixes for tr in truth)
    for batch_size in (1, 3, 10, na * k):
        found, x_adv, evaluations = run(net, x0, kind, feats, vals, present, batch_size, positions, gallop=True)
        assert torch.equal(found, found_all), batch_size
        assert torch.equal(x_adv, x_all), batch_size
        assert sum(tr.to_first for tr in truth) <= evaluations <= cap, batch_size
        alone = [run(net, x0[i:i + 1], kind, feats[i:i + 1], vals[i:i + 1], present[i:i + 1], batch_size,
                     positions, gallop=True) for i in range(na)]
        assert sum(a[2] for a in alone) == evaluations, batch_size
        assert torch.equal(torch.cat([a[1] for a in alone]), x_all), batch_size
    _, _, plain = run(net, x0, kind, feats, vals, present, na * k, positions)
    assert plain == sum(tr.prefixes for tr in truth) >= cap
