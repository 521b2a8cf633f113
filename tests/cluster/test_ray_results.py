"""``RayExecutor`` gives the in-process executor's results, bit for bit.

Bounds, adversarial examples, evaluation counts, level-1 sensitivities and certificates of runs
on a local Ray instance (2 worker processes) equal those of the default executor, and on the
brute-force oracle cases both equal the enumerated truth. The Ray runs send the model once per
run and each shard once; units come back in the order they finish.
"""

from __future__ import annotations

import pytest
import torch

import l0tre
from l0tre.engine.executor import InProcessExecutor

from ..conftest import shared_data_dir
from ..engine.oracle import brute_force_dm, same
from ..engine.test_oracle import random_cnn, random_mlp
from .conftest import import_ray

import_ray()
from l0tre.cluster import RayExecutor  # noqa: E402  (after the skip when Ray is missing)

SHAPE = (1, 3, 3)



def _inputs(shape: tuple[int, int, int], n: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("seed,features,shape", [(11, "pixel", SHAPE), (10, "element", (2, 2, 2))])
def test_oracle_cases_equal_in_process_and_truth(ex: RayExecutor, seed: int, features: str,
                                                 shape: tuple[int, int, int]) -> None:
    model = random_mlp(shape, 3, seed)
    x = _inputs(shape, 4, seed + 10)
    n = shape[1] * shape[2] if features == "pixel" else shape[0] * shape[1] * shape[2]
    kw: dict[str, object] = {"epsilon": 0.5, "t_max": n, "batch_size": 8, "features": features,
                             "keep_sensitivity": True}
    ref = l0tre.evaluate(model, x, executor=InProcessExecutor(), **kw)  # type: ignore[arg-type]
    got = l0tre.evaluate(model, x, executor=ex, **kw)  # type: ignore[arg-type]
    assert got.stopped in ("converged", "t_max")
    same(ref, got)
    truth = torch.tensor([brute_force_dm(model, xi, 2, features)[0] for xi in x])
    assert torch.equal(got.lower, truth) and torch.equal(got.upper, truth)
    assert int(truth.max()) >= 2  # levels with several shards and units were run remotely


def test_float32_cnn_incremental_t2_actors_and_tasks(ex: RayExecutor) -> None:
    """The fast paths (incremental chain, pair tables) run on the workers too; the stateless
    task workers give the same results (the actors are stopped meanwhile: 2 CPUs)."""
    shape = (2, 4, 4)
    model = random_cnn(shape, 4, 3).float()
    x = _inputs(shape, 3, 5, torch.float32)
    kw: dict[str, object] = {"epsilon": 0.5, "t_max": 2, "batch_size": 64, "incremental": True,
                             "keep_sensitivity": True}
    ref = l0tre.evaluate(model, x, **kw)  # type: ignore[arg-type]
    assert ref.t == 2 or bool((ref.lower == ref.upper).all())
    same(ref, l0tre.evaluate(model, x, executor=ex, **kw))  # type: ignore[arg-type]
    ex.close()  # frees the CPUs for the tasks; the next use starts the actors again
    for per_call in (1, 3):
        with RayExecutor(workers="tasks", num_workers=2, units_per_call=per_call) as tasks:
            same(ref, l0tre.evaluate(model, x, executor=tasks, **kw))  # type: ignore[arg-type]


def test_certificates_equal(ex: RayExecutor) -> None:
    model = random_mlp(SHAPE, 3, 6)
    x = _inputs(SHAPE, 4, 16)
    kw: dict[str, object] = {"epsilon": 0.5, "t_max": 3, "batch_size": 8, "certify": True}
    ref = l0tre.evaluate(model, x, **kw)  # type: ignore[arg-type]
    got = l0tre.evaluate(model, x, executor=ex, **kw)  # type: ignore[arg-type]
    assert ref.certified_lower is not None and int(ref.certified_lower.max()) >= 1
    same(ref, got)


def _mnist(limit: int, shape: tuple[int, int, int] | None = None) -> torch.Tensor:
    data = l0tre.load_data("mnist:test", data_root=shared_data_dir(), limit=limit,  # type: ignore[arg-type]
                           input_shape=shape)
    return data.x


def test_mnist_20_images_t1(ex: RayExecutor) -> None:
    model = l0tre.load_model("paper-mnist")
    x = _mnist(20)
    kw: dict[str, object] = {"epsilon": 0.5, "t_max": 1, "keep_sensitivity": True}
    ref = l0tre.evaluate(model, x, **kw)  # type: ignore[arg-type]
    got = l0tre.evaluate(model, x, executor=ex, **kw)  # type: ignore[arg-type]
    assert ref.t == 1 and int(ref.found.sum()) > 0
    same(ref, got)


@pytest.mark.parametrize("side,incremental", [(4, False), pytest.param(10, None, marks=pytest.mark.slow)])
def test_mnist_20_images_t2_on_a_pixel_block(ex: RayExecutor, side: int, incremental: bool | None) -> None:
    """t = 2 on the central ``side``×``side`` pixels (the full 28×28 level is slow: below)."""
    model = l0tre.load_model("paper-mnist")
    x = _mnist(20)
    lo = (28 - side) // 2
    block = [r * 28 + c for r in range(lo, lo + side) for c in range(lo, lo + side)]
    kw: dict[str, object] = {"epsilon": 0.5, "t_max": 2, "pixels": block, "incremental": incremental}
    ref = l0tre.evaluate(model, x, **kw)  # type: ignore[arg-type]
    got = l0tre.evaluate(model, x, executor=ex, **kw)  # type: ignore[arg-type]
    assert ref.t == 2 and len(ref.level_evaluations) == 2
    same(ref, got)


@pytest.mark.slow
def test_mnist_20_images_t2_full(ex: RayExecutor) -> None:
    """The whole t = 2 level of 20 28×28 images (about 20 min per run on one CPU core)."""
    model = l0tre.load_model("paper-mnist")
    x = _mnist(20)
    kw: dict[str, object] = {"epsilon": 0.5, "t_max": 2}
    ref = l0tre.evaluate(model, x, **kw)  # type: ignore[arg-type]
    same(ref, l0tre.evaluate(model, x, executor=ex, **kw))  # type: ignore[arg-type]
