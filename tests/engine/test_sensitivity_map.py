"""The level-1 sensitivity map (``keep_sensitivity=True`` → ``Result.sensitivity``).

The oracle loops over every feature and every grid colour that differs from the feature's
original value, builds the image, runs the bare ``torch.nn.Module`` and takes the margin of the
reference class ``j`` (the model's prediction on the original): ``z_j − max_{k≠j} z_k``; the map
holds the minimum per feature. Nothing of the engine is used on that side.

Scores agree to rounding, not bit for bit: a model call on 1 row and on 509 rows of a float64
net differ in the last bits (measured: ≤ 1e-14), so comparisons use ``TOL``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

import l0tre
import l0tre.api
import l0tre.engine

from .test_oracle import random_cnn, random_mlp

TOL = 1e-12



# -- the oracle -------------------------------------------------------------------------------------
def oracle_map(model: nn.Module, x: torch.Tensor, steps: int, features: str,
               selected: list[int] | None = None) -> torch.Tensor:
    """``(N, H, W)`` (pixel) or ``(N, C, H, W)`` (element): per feature the lowest margin of the
    reference class over its grid colours that differ from the original; ``inf`` where the
    feature is not selected or no colour differs."""
    n_in, c, h, w = x.shape
    grid = [k / steps for k in range(steps + 1)]
    out = torch.full((n_in, h, w) if features == "pixel" else (n_in, c, h, w), float("inf"), dtype=torch.float64)
    n = h * w if features == "pixel" else c * h * w
    feats = range(n) if selected is None else selected
    with torch.no_grad():
        for i in range(n_in):
            j = int(model(x[i : i + 1]).argmax(1))
            for f in feats:
                cells = [(ch, f // w, f % w) for ch in range(c)] if features == "pixel" else \
                    [(f // (h * w), (f // w) % h, f % w)]
                orig = tuple(float(x[i][cell]) for cell in cells)
                images = []
                for col in itertools.product(grid, repeat=len(cells)):
                    if col == orig:
                        continue
                    img = x[i].clone()
                    for cell, v in zip(cells, col, strict=True):
                        img[cell] = v
                    images.append(img)
                if not images:
                    continue
                z = model(torch.stack(images)).double()
                others = torch.cat([z[:, :j], z[:, j + 1 :]], dim=1)
                margin = float((z[:, j] - others.max(dim=1).values).min())
                pos = (i, f // w, f % w) if features == "pixel" else (i, *cells[0])
                out[pos] = margin
    return out


def _close(got: torch.Tensor | None, want: torch.Tensor, tol: float = TOL) -> None:
    assert got is not None
    assert tuple(got.shape) == tuple(want.shape)
    fin = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), fin), "inf in different places"
    assert bool((got[~fin] == want[~fin]).all())
    if bool(fin.any()):
        diff = float((got[fin].double() - want[fin]).abs().max())
        assert diff <= tol * (1 + float(want[fin].abs().max())), diff


def _x(shape: tuple[int, int, int], n: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _run(model: nn.Module, x: torch.Tensor, **kw: object) -> l0tre.Result:
    kw = {"epsilon": 0.5, "t_max": 1, "keep_sensitivity": True, **kw}
    return l0tre.evaluate(model, x, **kw)  # type: ignore[arg-type]


# -- the map equals the oracle -------------------------------------------------------------------------
CASES = [
    (random_mlp, (1, 3, 3), "pixel", 0.5),
    (random_mlp, (3, 2, 2), "pixel", 0.5),  # 27 colours per pixel
    (random_mlp, (1, 2, 4), "pixel", 0.25),
    (random_cnn, (2, 4, 4), "pixel", 0.5),
    (random_mlp, (2, 2, 2), "element", 0.5),
    (random_cnn, (2, 3, 3), "element", 0.5),
]


@pytest.mark.parametrize("make,shape,features,epsilon", CASES)
def test_map_equals_the_per_feature_brute_force(make: object, shape: tuple[int, int, int], features: str,
                                                epsilon: float) -> None:
    model = make(shape, 3, 5)  # type: ignore[operator]
    x = _x(shape, 6, 3)
    want = oracle_map(model, x, round(1 / epsilon), features)
    assert bool(torch.isfinite(want).all())  # every feature has a colour that differs from it
    res = _run(model, x, epsilon=epsilon, features=features, t_max=2)
    _close(res.sensitivity, want)
    assert res.sensitivity is not None and res.sensitivity.dtype == torch.float64


def test_map_covers_inputs_that_flip_and_inputs_that_do_not() -> None:
    """Inputs with a label flip at t = 1 (negative margins) and robust ones, over several shards."""
    model = random_mlp((1, 3, 3), 3, 7)
    x = _x((1, 3, 3), 12, 17)
    want = oracle_map(model, x, 2, "pixel")
    per_input = want.flatten(1).min(1).values
    assert bool((per_input < 0).any()) and bool((per_input > 0).any())
    res = _run(model, x, batch_size=1, t_max=3)
    _close(res.sensitivity, want)


@pytest.mark.parametrize("features,shape", [("pixel", (1, 3, 3)), ("pixel", (2, 2, 2)), ("element", (2, 2, 2))])
def test_grid_valued_inputs_skip_the_original_colour(features: str, shape: tuple[int, int, int]) -> None:
    """On grid-valued inputs a feature has one colour fewer; the original colour (margin of the
    unchanged input) must not enter the minimum. No feature is ever without a valid colour (the
    grid has at least two), so the map is finite everywhere."""
    model = random_mlp(shape, 3, 7)
    x = torch.randint(0, 3, (5, *shape), generator=torch.Generator().manual_seed(2)).double() / 2
    x[0] = 0.5  # an input equal to the grid's middle everywhere
    want = oracle_map(model, x, 2, features)
    res = _run(model, x, features=features)
    assert res.sensitivity is not None and bool(torch.isfinite(res.sensitivity).all())
    _close(res.sensitivity, want)
    # the case can tell: somewhere the unchanged input's margin is below every real change's, so
    # counting the original colour would have lowered the map there
    with torch.no_grad():
        z = model(x)
    j = z.argmax(1)
    own = z.gather(1, j.view(-1, 1)).squeeze(1) - z.scatter(1, j.view(-1, 1), float("-inf")).max(1).values
    assert bool((own.view(-1, 1) < want.flatten(1) - 1e-9).any())


def test_map_is_the_same_for_every_batch_size_and_execution_mode() -> None:
    shape = (2, 4, 4)
    model = random_cnn(shape, 3, 5)
    x = _x(shape, 6, 3)
    want = oracle_map(model, x, 2, "pixel")
    runs = [
        {"batch_size": 1, "mode": "eager"}, {"batch_size": 7, "mode": "eager"}, {"batch_size": 509, "mode": "eager"},
        {"batch_size": 7}, {"batch_size": 509}, {"batch_size": 3, "incremental": True},
        {"batch_size": 64, "incremental": True}, {"batch_size": 64, "incremental": False},
    ]
    maps = [_run(model, x, **kw).sensitivity for kw in runs]
    for m in maps:
        _close(m, want)
    # the element map through the incremental chain (channel-wise windows)
    model = random_cnn((2, 3, 3), 3, 6)
    x = _x((2, 3, 3), 4, 9)
    want = oracle_map(model, x, 2, "element")
    for kw in runs[::2]:
        _close(_run(model, x, features="element", **kw).sensitivity, want)


def test_float32_model() -> None:
    shape = (2, 4, 4)
    model = random_cnn(shape, 3, 5)
    x = _x(shape, 4, 3)
    want = oracle_map(model, x, 2, "pixel")
    res = _run(model.float(), x.float())
    assert res.sensitivity is not None and res.sensitivity.dtype == torch.float32
    _close(res.sensitivity, want, tol=1e-5)


# -- restricted spaces, resumes, options ------------------------------------------------------------
@pytest.mark.parametrize("features,shape,sel", [("pixel", (1, 3, 3), [0, 4, 5, 8]), ("pixel", (2, 4, 4), [3, 9, 10]),
                                                ("element", (2, 2, 2), [1, 6, 7])])
def test_selection_is_inf_outside(features: str, shape: tuple[int, int, int], sel: list[int]) -> None:
    model = random_cnn(shape, 3, 5) if shape[1] > 3 else random_mlp(shape, 3, 5)
    x = _x(shape, 5, 4)
    want = oracle_map(model, x, 2, features, sel)
    res = _run(model, x, features=features, pixels=sel, t_max=len(sel))
    _close(res.sensitivity, want)
    assert int(torch.isfinite(res.sensitivity).flatten(1).sum(1).max()) == len(sel)  # type: ignore[union-attr]
    # a mask gives the same map; other pixels outside the selection stay inf
    mask = torch.zeros(shape[1:] if features == "pixel" else shape, dtype=torch.bool)
    mask.view(-1)[sel] = True
    masked = _run(model, x, features=features, pixels=mask, t_max=len(sel))
    assert masked.sensitivity is not None and bool(torch.isinf(masked.sensitivity[:, ~mask]).all())
    _close(masked.sensitivity, want)


def test_map_survives_later_levels_and_a_resume_in_the_middle_of_level_1(tmp_path: Path) -> None:
    model = random_mlp((1, 3, 3), 3, 11)
    x = _x((1, 3, 3), 8, 21)
    want = oracle_map(model, x, 2, "pixel")
    deep = _run(model, x, t_max=3, batch_size=2)
    _close(deep.sensitivity, want)
    ckpt = tmp_path / "ck.pt"
    gen = l0tre.api.prepare(model, x, epsilon=0.5, t_max=3, batch_size=2, report_every=1e-9, checkpoint=ckpt,
                            keep_sensitivity=True).run()
    for i, snap in enumerate(gen):
        if i >= 2:
            assert snap.t == 0  # still inside level 1
            break
    gen.close()
    resumed = _run(model, x, t_max=3, batch_size=2, checkpoint=ckpt)
    _close(resumed.sensitivity, want)
    assert torch.equal(resumed.lower, deep.lower) and torch.equal(resumed.upper, deep.upper)


def test_none_without_keep_sensitivity() -> None:
    model = random_mlp((1, 3, 3), 3, 5)
    x = _x((1, 3, 3), 3, 3)
    assert l0tre.evaluate(model, x, epsilon=0.5, t_max=1).sensitivity is None
    assert l0tre.evaluate(model, x, epsilon=0.5, t_max=1, keep_sensitivity=False).sensitivity is None
    snaps = list(l0tre.evaluate_iter(model, x, epsilon=0.5, t_max=2, report_every=1e-9))
    assert all(s.sensitivity is None for s in snaps)


def test_top_k_below_n_is_refused() -> None:
    model = random_mlp((1, 3, 3), 3, 5)
    x = _x((1, 3, 3), 3, 3)
    with pytest.raises(ValueError, match="top_k"):
        l0tre.api.prepare(model, x, keep_sensitivity=True, top_k=8)
    with pytest.raises(ValueError, match="top_k"):
        l0tre.api.prepare(model, x, keep_sensitivity=True, top_k=1)
    # top_k = n is enough; with a selection n is the selection's size
    _close(_run(model, x, top_k=9).sensitivity, oracle_map(model, x, 2, "pixel"))
    _close(_run(model, x, top_k=3, pixels=[0, 1, 2]).sensitivity, oracle_map(model, x, 2, "pixel", [0, 1, 2]))
    with pytest.raises(ValueError, match="top_k"):
        l0tre.api.prepare(model, x, keep_sensitivity=True, top_k=2, pixels=[0, 1, 2])
