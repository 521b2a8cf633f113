"""The cases of the before/after comparison (see ``make_golden.py``)."""

from __future__ import annotations

from typing import Any

import torch

import l0tre
from tests.engine.test_oracle import random_cnn, random_mlp, trained_mlp

Case = tuple[Any, torch.Tensor, dict[str, Any]]


def _mnist20() -> tuple[Any, torch.Tensor]:
    import numpy as np

    from l0tre.paths import embedded_file

    model = l0tre.load_model("paper-mnist")
    with np.load(embedded_file("mnist_test_100.npz"), allow_pickle=False) as z:
        x = torch.from_numpy(z["x"][:20, None].astype(np.float32) / 255.0)
    return model, x


def engine_cases() -> dict[str, Case]:
    g = torch.Generator().manual_seed
    x33 = torch.rand(6, 1, 3, 3, generator=g(3), dtype=torch.float64)
    x44 = torch.rand(6, 1, 4, 4, generator=g(3), dtype=torch.float64)
    cases: dict[str, Case] = {
        "oracle_mlp_pixel": (random_mlp((1, 3, 3), 2, 5, hidden=4), x33, {"epsilon": 0.5, "t_max": 9}),
        "oracle_mlp_element": (random_mlp((2, 2, 2), 2, 5, hidden=4),
                               torch.rand(6, 2, 2, 2, generator=g(4), dtype=torch.float64),
                               {"epsilon": 0.5, "t_max": 8, "features": "element"}),
        "oracle_cnn_partial": (random_cnn((1, 4, 4), 2, 7), x44, {"epsilon": 0.5, "t_max": 3}),
        "oracle_trained": (trained_mlp((1, 4, 4), 2), x44, {"epsilon": 0.5, "t_max": 4}),
        "oracle_trained_quarter": (trained_mlp((1, 2, 4), 1),
                                   torch.rand(6, 1, 2, 4, generator=g(3), dtype=torch.float64),
                                   {"epsilon": 0.25, "t_max": 8}),
    }
    model, x = _mnist20()
    cases["mnist20_t1_eager"] = (model, x, {"epsilon": 0.5, "t_max": 1, "mode": "eager"})
    cases["mnist20_t1_auto"] = (model, x, {"epsilon": 0.25, "t_max": 1})
    return cases


def certify_cases() -> dict[str, Case]:
    g = torch.Generator().manual_seed
    return {
        "certify_mlp": (random_mlp((1, 3, 3), 2, 5, hidden=4),
                        torch.rand(6, 1, 3, 3, generator=g(3), dtype=torch.float64),
                        {"epsilon": 0.5, "t_max": 3, "certify": True}),
    }


def attack_cases() -> dict[str, Case]:
    model, x = _mnist20()
    return {
        "attack_fast": (model, x, {"effort": "fast", "precision": "float32"}),
        "attack_default": (model, x, {"effort": "default", "precision": "float32"}),
    }
