"""Pixel vs element semantics, grid, reference label, and input guards."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import l0tre
import l0tre.engine
from l0tre.engine.grid import check_epsilon, colours, grid_values
from l0tre.engine.subspaces import count_points, n_subsets, unrank

from .test_oracle import random_mlp


class RedPixelDetector(nn.Module):
    """Class 1 iff some pixel is bright red (R high, G and B low): one pixel flip, three channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = (x[:, 0] - x[:, 1] - x[:, 2]).amax(dim=(1, 2))  # (N,)
        return torch.stack([0.5 - red, red - 0.5], 1)


def test_pixel_counts_one_per_position_on_rgb() -> None:
    x = torch.full((2, 3, 3, 3), 0.5)
    res = l0tre.evaluate(RedPixelDetector(), x, epsilon=0.5, t_max=2)
    assert res.upper.tolist() == [0, 0] and res.lower.tolist() == [0, 0]
    changed = (res.adversarial != x).any(1).sum((1, 2))
    assert changed.tolist() == [1, 1]
    assert ((res.adversarial != x).sum((1, 2, 3)) >= 2).all()  # several channels of that pixel moved
    el = l0tre.evaluate(RedPixelDetector(), x, epsilon=0.5, t_max=3, features="element")
    # element features: red needs R up AND G, B down → 3 elements → d = 2
    assert el.lower.tolist() == [2, 2] and el.upper.tolist() == [2, 2]


def test_grid_and_subsets() -> None:
    assert check_epsilon(0.5) == 2 and check_epsilon(0.25) == 4 and check_epsilon(0.1) == 10
    assert grid_values(2, (0.0, 1.0)).tolist() == [0.0, 0.5, 1.0]
    assert grid_values(4, (-1.0, 1.0)).tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert colours(grid_values(2, (0.0, 1.0)), 3).shape == (27, 3)
    for n, t in ((5, 1), (6, 2), (7, 3)):
        subs = unrank(torch.arange(n_subsets(n, t)), n, t)
        assert len({tuple(s) for s in subs.tolist()}) == n_subsets(n, t)
        assert bool((subs[:, 1:] > subs[:, :-1]).all()) if t > 1 else True
        assert bool((subs >= 0).all() and (subs < n).all())


@pytest.mark.parametrize("t", [1, 2, 3])
@pytest.mark.parametrize(("shape", "features"), [((1, 2, 3), "pixel"), ((2, 2, 2), "pixel"), ((2, 1, 3), "element")])
def test_count_points_counts_the_valid_points(shape: tuple[int, int, int], features: str, t: int) -> None:
    """``count_points`` (the planned evaluations of a level) vs enumerating, with itertools, every
    t-subset and every grid colour of its members that differs from the member's original value."""
    c, h, w = shape
    x = torch.randint(0, 5, (3, *shape), generator=torch.Generator().manual_seed(t)).double() / 4  # some on the grid
    x[0], x[1] = 0.5, 0.25  # every value on the grid, none
    grid = [0.0, 0.5, 1.0]
    if features == "pixel":
        feats = [x[:, :, i, j] for i in range(h) for j in range(w)]  # (N, C) each
        palette = list(itertools.product(grid, repeat=c))
    else:
        feats = [x[:, k, i, j].unsqueeze(1) for k in range(c) for i in range(h) for j in range(w)]
        palette = [(g,) for g in grid]
    counts, enumerated = [], []
    for a in range(x.shape[0]):
        orig = [tuple(f[a].tolist()) for f in feats]
        counts.append([sum(col != o for col in palette) for o in orig])
        enumerated.append(sum(
            1
            for sub in itertools.combinations(range(len(feats)), t)
            for cols in itertools.product(palette, repeat=t)
            if all(col != orig[f] for f, col in zip(sub, cols, strict=True))
        ))
    assert count_points(torch.tensor(counts), t).tolist() == enumerated
    assert len(set(enumerated)) > 1  # inputs with more or fewer values on the grid count differently


def test_evaluations_match_estimate_at_t1() -> None:
    """The level's planned evaluations (the estimate shown by progress bars and ``l0tre info``)
    equal an independent count of the valid grid points, and the run's ``evaluations`` equal the
    rows the model really saw during the level."""
    model = random_mlp((1, 3, 3), 3, 1)
    x = torch.rand(3, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x[0, 0, 0, 0] = 0.5  # on the grid: one colour skipped
    x[1, 0, 2, 1], x[1, 0, 0, 2] = 1.0, 0.0
    grid = (0.0, 0.5, 1.0)
    valid = sum(g != v for v in x.flatten().tolist() for g in grid)
    assert valid == 3 * 9 * 3 - 3
    planned: list[tuple[int, int, int]] = []
    rows: list[int] = []

    class Planned(l0tre.engine.ProgressHook):
        def level_start(self, t: int, evaluations: int, inputs: int) -> None:
            planned.append((t, evaluations, inputs))
            rows.clear()  # count the model's rows from here on

    def counted(z: torch.Tensor) -> torch.Tensor:
        rows.append(z.shape[0])
        return model(z)

    clf = l0tre.Classifier(counted, dtype=torch.float64)  # a callable: no padding of batches
    res = l0tre.evaluate(clf, x, epsilon=0.5, t_max=1, top_k=1, mode="eager", batch_size=16, progress=Planned())
    assert planned == [(1, valid, 3)]
    assert res.evaluations == sum(rows)
    # and beyond the sensitivity pass, one row per input: the re-check of its one-pixel witness,
    # or (no witness) its single top-1 prefix
    assert bool(res.found.any()) and not bool(res.found.all())
    assert res.evaluations == valid + 3


def test_reference_is_prediction_and_accuracy_reported() -> None:
    model = random_mlp((1, 2, 2), 3, 4)
    x = torch.rand(4, 1, 2, 2, dtype=torch.float64)
    pred = model(x).argmax(1)
    wrong = (pred + 1) % 3
    res = l0tre.evaluate(model, x, epsilon=0.5, t_max=1, labels=wrong)
    assert torch.equal(res.predicted, pred)
    assert torch.equal(res.labels, wrong)
    assert res.accuracy == 0.0


MODEL = random_mlp((1, 2, 2), 3, 0)
X = torch.rand(2, 1, 2, 2, dtype=torch.float64)


@pytest.mark.parametrize(
    "kwargs,exc,message",
    [
        ({"x": X[0]}, ValueError, r"x: expected shape \(N, C, H, W\), got \(1, 2, 2\)"),
        ({"x": (X * 255).long()}, TypeError, r"x: expected a floating-point tensor.*int64"),
        ({"x": X.tolist()}, TypeError, r"x: expected a torch.Tensor or NumPy array.*list"),
        ({"x": X.numpy().astype(str)}, TypeError, r"x: expected a numeric NumPy array, got dtype <U"),
        ({"x": (X.numpy() * 255).astype("uint8")}, TypeError, r"x: expected a floating-point tensor.*uint8.*x / 255"),
        ({"x": X[:0]}, ValueError, r"x: expected at least one input, got an empty batch"),
        ({"x": X * 2}, ValueError, r"x: expected values inside the model bounds \[0.0, 1.0\], got range"),
        ({"x": X.clone().fill_(float("nan"))}, ValueError, r"x: expected finite values, got 8 NaN/Inf"),
        ({"epsilon": 0}, ValueError, r"epsilon: expected a number in \(0, 1\]"),
        ({"epsilon": -0.5}, ValueError, r"epsilon: expected a number in \(0, 1\]"),
        ({"epsilon": 0.3}, ValueError, r"epsilon: expected 1/epsilon to be a whole number.*got 0.3"),
        ({"epsilon": "0.5"}, TypeError, r"epsilon: expected a number"),
        ({"t_max": 0}, ValueError, r"t_max: expected a positive integer, got 0"),
        ({"t_max": 1.5}, TypeError, r"t_max: expected a positive integer, got float"),
        ({"features": "channel"}, ValueError, r"features: expected one of 'pixel', 'element', got 'channel'"),
        ({"batch_size": 0}, ValueError, r"batch_size: expected a positive integer, got 0"),
        ({"time_budget": -1}, ValueError, r"time_budget: expected a positive finite number, got -1"),
        ({"labels": torch.tensor([1])}, ValueError, r"labels: expected shape \(2,\) to match x"),
        ({"labels": np.array([0.5, 1.0])}, TypeError, r"labels: expected a 1-D integer tensor of shape \(2,\)"),
        ({"show_progress": True, "progress": l0tre.engine.ProgressHook()}, ValueError,
         r"show_progress: .*not both"),
        ({"bounds": (1, 0)}, ValueError, r"bounds: expected finite lo < hi, got \(1.0, 0.0\)"),
        ({"device": "tpu"}, ValueError, r"device: expected 'auto', 'cpu', 'cuda'"),
        ({"max_evaluations": 10}, ValueError,
         r"max_evaluations: level t=1 needs about 24 model evaluations .* lower t_max, use a coarser epsilon"),
    ],
)
def test_guards(kwargs: dict[str, object], exc: type[Exception], message: str) -> None:
    args: dict[str, object] = {"x": X, "epsilon": 0.5, "t_max": 1}
    args.update(kwargs)
    x = args.pop("x")
    with pytest.raises(exc, match=message):
        l0tre.evaluate(MODEL, x, **args)  # type: ignore[arg-type]


def test_numpy_inputs_and_labels_are_accepted() -> None:
    """NumPy ``x`` and ``labels`` are converted (copies, any strides): the same results as tensors."""
    want = l0tre.evaluate(MODEL, X, epsilon=0.5, t_max=2, labels=torch.tensor([0, 2]))
    xs = np.ascontiguousarray(X.numpy()[:, :, ::-1])[:, :, ::-1]  # negative strides, same values
    assert xs.strides[2] < 0
    got = l0tre.evaluate(MODEL, xs, epsilon=0.5, t_max=2, labels=np.array([0, 2], dtype=np.int32))
    for name in ("lower", "upper", "found", "adversarial", "adversarial_label", "predicted", "labels"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert isinstance(got.adversarial, torch.Tensor) and got.adversarial.dtype == torch.float64
    snaps = list(l0tre.evaluate_iter(MODEL, X.numpy(), epsilon=0.5, t_max=1))
    assert snaps[-1].stopped in ("t_max", "converged")
    a = l0tre.attack(MODEL, X.numpy(), epsilon=0.5, labels=np.array([0, 2]))
    assert a.x_adv.shape == X.shape


def test_model_output_shape_guard() -> None:
    with pytest.raises(ValueError, match=r"model output: expected shape \(N, classes\) = \(2, K\), got \(2, 3, 1\)"):
        l0tre.evaluate(lambda x: MODEL(x.double()).unsqueeze(2), X, epsilon=0.5, t_max=1)
    with pytest.raises(ValueError, match=r"model output: expected shape \(N, classes\)"):
        l0tre.evaluate(lambda x: MODEL(x.double())[:1], X, epsilon=0.5, t_max=1)
