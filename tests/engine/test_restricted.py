"""Restricted feature spaces (``pixels=``): bounds over a given set of features only.

The oracle enumerates, with ``itertools``, every assignment of the selected features to their
original value or a grid colour (all other features fixed at their original values), runs the
bare ``torch.nn.Module`` and takes the smallest number of changed features that flips the
label. Nothing of the engine is used on that side.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import l0tre

from .test_oracle import random_cnn, random_mlp


# -- the oracle -------------------------------------------------------------------------------------
def _cells(shape: tuple[int, int, int], features: str, f: int) -> list[tuple[int, int, int]]:
    c, h, w = shape
    if features == "pixel":
        return [(ch, f // w, f % w) for ch in range(c)]
    return [(f // (h * w), (f // w) % h, f % w)]


def restricted_truth(model: nn.Module, x0: torch.Tensor, steps: int, features: str, sel: list[int]) -> int:
    """``d_m`` over the features ``sel`` of ``x0`` ``(C, H, W)``: (min changed features of a
    label flip) − 1, or ``len(sel)`` when no assignment flips it."""
    shape = tuple(x0.shape)
    grid = [k / steps for k in range(steps + 1)]
    options = []
    for f in sel:
        cells = _cells(shape, features, f)  # type: ignore[arg-type]
        orig = tuple(float(x0[c]) for c in cells)
        colours = [col for col in itertools.product(grid, repeat=len(cells)) if col != orig]
        options.append([(cells, None)] + [(cells, col) for col in colours])
    images, dist = [], []
    for choice in itertools.product(*options):
        img = x0.clone()
        changed = 0
        for cells, col in choice:
            if col is None:
                continue
            changed += 1
            for cell, v in zip(cells, col, strict=True):
                img[cell] = v
        images.append(img)
        dist.append(changed)
    with torch.no_grad():
        j = int(model(x0.unsqueeze(0)).argmax(1))
        pred = torch.cat([model(torch.stack(images[i : i + 4096])).argmax(1)
                          for i in range(0, len(images), 4096)])
    flips = [d for d, p in zip(dist, pred.tolist(), strict=True) if p != j]
    return min(flips) - 1 if flips else len(sel)


def _check(model: nn.Module, x: torch.Tensor, features: str, sel: list[int], epsilon: float = 0.5,
           **kw: object) -> l0tre.Result:
    steps = round(1 / epsilon)
    truth = torch.tensor([restricted_truth(model, xi, steps, features, sel) for xi in x])
    snaps = list(l0tre.evaluate_iter(model, x, epsilon=epsilon, t_max=len(sel), features=features, pixels=sel,
                                     report_every=1e-9, **kw))
    for s in snaps:  # anytime: every snapshot brackets the truth
        assert bool((s.lower <= truth).all()) and bool((truth <= s.upper).all()), (s.lower, truth, s.upper)
    res = snaps[-1]
    assert res.stopped in ("converged", "t_max")
    assert res.n_features == len(sel)
    assert torch.equal(res.lower, truth) and torch.equal(res.upper, truth), (res.lower, res.upper, truth)
    _check_adversarials(model, x, res, features, sel)
    return res


def _check_adversarials(model: nn.Module, x: torch.Tensor, res: l0tre.Result, features: str,
                        sel: list[int]) -> None:
    shape = tuple(x.shape[1:])
    inside = torch.zeros(shape, dtype=torch.bool)
    for f in sel:
        for cell in _cells(shape, features, f):  # type: ignore[arg-type]
            inside[cell] = True
    with torch.no_grad():
        pred = model(res.adversarial).argmax(1)
    for i in range(x.shape[0]):
        diff = res.adversarial[i] != x[i]
        assert not bool(diff[~inside].any()), "a feature outside the selection changed"
        if bool(res.found[i]):
            l0 = int(diff.any(0).sum()) if features == "pixel" else int(diff.sum())
            assert l0 == int(res.upper[i]) + 1
            assert int(pred[i]) != int(res.predicted[i]) and int(pred[i]) == int(res.adversarial_label[i])
        else:
            assert int(res.upper[i]) == len(sel) and torch.equal(res.adversarial[i], x[i])


def _x(shape: tuple[int, int, int], n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- bounds ---------------------------------------------------------------------------------------
# brute-force bounds of these cases: [5, 3, 1, 4], [4, 4, 4, 3] (no flip inside three of the
# selections), [3, 1, 2, 2], [3, 2, 1, 1]
@pytest.mark.parametrize("seed,xseed,sel", [(11, 21, [1, 2, 3, 4, 8]), (11, 21, [0, 2, 6, 8]), (6, 16, [0, 2, 4, 5]),
                                            (5, 15, [0, 1, 5])])
def test_mlp_pixel_selection_matches_restricted_brute_force(seed: int, xseed: int, sel: list[int]) -> None:
    model = random_mlp((1, 3, 3), 3, seed)
    x = _x((1, 3, 3), 4, xseed)
    res = _check(model, x, "pixel", sel, batch_size=5)
    full = l0tre.evaluate(model, x, epsilon=0.5, t_max=9)
    assert bool((res.upper >= full.lower).all())  # fewer features: the radius cannot shrink


def test_colour_pixels_and_a_finer_grid() -> None:
    model = random_mlp((3, 2, 2), 3, 4)
    _check(model, _x((3, 2, 2), 3, 8), "pixel", [0, 1])  # bounds [0, 1, 1]
    model = random_mlp((1, 2, 4), 3, 2)
    _check(model, _x((1, 2, 4), 3, 9), "pixel", [0, 2, 4], epsilon=0.25)  # bounds [2, 1, 3]


def test_element_selection_matches_restricted_brute_force() -> None:
    model = random_mlp((2, 2, 2), 3, 11)
    _check(model, _x((2, 2, 2), 4, 21), "element", [0, 3, 6, 7])  # bounds [2, 1, 0, 3]
    model = random_mlp((2, 2, 2), 3, 5)
    _check(model, _x((2, 2, 2), 4, 15), "element", [0, 2, 5, 7])  # bounds [1, 3, 1, 0]


@pytest.mark.parametrize("incremental", [False, True])
def test_cnn_selection_through_the_incremental_path(incremental: bool) -> None:
    model = random_cnn((1, 4, 4), 3, 5)
    x = _x((1, 4, 4), 3, 15)
    _check(model, x, "pixel", [1, 3, 10, 11, 13], incremental=incremental, batch_size=16)  # bounds [2, 1, 3]
    model = random_cnn((2, 3, 3), 3, 6)
    _check(model, _x((2, 3, 3), 2, 16), "element", [12, 14, 15, 16], incremental=incremental,
           batch_size=16)  # bounds [3, 4]


def test_grid_valued_inputs_in_a_selection() -> None:
    model = random_mlp((1, 3, 3), 3, 11)
    x = torch.randint(0, 3, (4, 1, 3, 3), generator=torch.Generator().manual_seed(3)).double() / 2
    _check(model, x, "pixel", [0, 3, 4, 8])  # bounds [4, 2, 1, 4]


# -- ways to give the selection ------------------------------------------------------------------
def _same(a: l0tre.Result, b: l0tre.Result) -> None:
    for name in ("lower", "upper", "found", "adversarial", "adversarial_label"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.n_features, a.t, a.evaluations) == (b.n_features, b.t, b.evaluations)


def test_mask_and_index_forms_agree() -> None:
    model = random_mlp((1, 3, 3), 3, 11)
    x = _x((1, 3, 3), 4, 21)
    sel = [1, 2, 3, 4, 8]
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask.view(-1)[sel] = True
    kw: dict[str, object] = {"epsilon": 0.5, "t_max": 5}
    ref = l0tre.evaluate(model, x, pixels=sel, **kw)
    for form in (mask, mask.numpy(), torch.tensor(sel), np.array(sel), [8, 4, 1, 3, 2, 4], (3, 1, 8, 4, 2)):
        _same(ref, l0tre.evaluate(model, x, pixels=form, **kw))
    # element features: a (C, H, W) mask
    model = random_mlp((2, 2, 2), 3, 3)
    x = _x((2, 2, 2), 3, 13)
    emask = torch.zeros(2, 2, 2, dtype=torch.bool)
    emask.view(-1)[[1, 6, 7]] = True
    _same(l0tre.evaluate(model, x, features="element", pixels=[1, 6, 7], **kw),
          l0tre.evaluate(model, x, features="element", pixels=emask, **kw))


def test_all_equals_no_selection() -> None:
    model = random_mlp((1, 3, 3), 3, 6)
    x = _x((1, 3, 3), 4, 16)
    kw: dict[str, object] = {"epsilon": 0.5, "t_max": 9}
    ref = l0tre.evaluate(model, x, **kw)
    assert ref.n_features == 9
    for form in ("all", list(range(9)), torch.ones(3, 3, dtype=torch.bool)):
        _same(ref, l0tre.evaluate(model, x, pixels=form, **kw))


@pytest.mark.parametrize("pixels,features,error", [
    ([0, 9], "pixel", ValueError),  # index out of range
    ([-1, 2], "pixel", ValueError),
    ([0, 18], "element", ValueError),
    (torch.ones(3, 4, dtype=torch.bool), "pixel", ValueError),  # wrong mask shape
    (torch.ones(1, 3, 3, dtype=torch.bool), "pixel", ValueError),  # element mask for pixel features
    (torch.ones(3, 3, dtype=torch.bool), "element", ValueError),  # pixel mask for element features
    (torch.zeros(3, 3, dtype=torch.bool), "pixel", ValueError),  # empty selection
    (torch.tensor([], dtype=torch.long), "pixel", ValueError),
    (torch.tensor([0.0, 1.0]), "pixel", TypeError),  # float tensor
    ([0.5, 2.0], "pixel", TypeError),
    (torch.tensor([[0, 1]]), "pixel", TypeError),  # 2-D indices
    ("some string", "pixel", ValueError),
])
def test_bad_selection_is_refused(pixels: object, features: str, error: type[Exception]) -> None:
    model = random_mlp((2, 3, 3), 3, 0) if features == "element" else random_mlp((1, 3, 3), 3, 0)
    x = _x((2, 3, 3) if features == "element" else (1, 3, 3), 2, 0)
    with pytest.raises(error, match="pixels"):
        l0tre.api.prepare(model, x, epsilon=0.5, t_max=1, features=features, pixels=pixels)


def test_empty_list_is_refused_naming_pixels() -> None:
    with pytest.raises((ValueError, TypeError), match="pixels"):
        l0tre.api.prepare(random_mlp((1, 3, 3), 3, 0), _x((1, 3, 3), 2, 0), pixels=[])


@pytest.mark.parametrize("certify", [True, "on", "only"])
def test_certification_refuses_a_selection(certify: object) -> None:
    with pytest.raises(ValueError, match="certify"):
        l0tre.api.prepare(random_mlp((1, 3, 3), 3, 0), _x((1, 3, 3), 2, 0), pixels=[0, 1], certify=certify)
    # the whole space is accepted (pixels="all" is no selection)
    l0tre.api.prepare(random_mlp((1, 3, 3), 3, 0), _x((1, 3, 3), 2, 0), pixels="all", certify=certify)
