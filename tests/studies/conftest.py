"""Fixtures of the study tests: tiny MLPs on 1x3x3 images (full enumeration is cheap), their
TorchScript files and a data file."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

SHAPE = (1, 3, 3)


#: (seed, bias) of three tiny models of different robustness on ``tiny_inputs(8, seed=3)``
#: (their true grid radii at ε = 0.5 are 2–5, 1–3 and 1–3 pixels; tests compute them)
ZOO = ((3, 0.6), (4, 0.4), (5, 0.2))


def tiny_mlp(seed: int, bias: float = 0.0, hidden: int = 6) -> nn.Module:
    """A 9 → hidden → 3 MLP with fixed random weights; ``bias`` is added to class 0's logit."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(9, hidden), nn.ReLU(), nn.Linear(hidden, 3)).eval()
    with torch.no_grad():
        net[3].bias[0] += bias
    return net


def tiny_inputs(n: int, seed: int = 0) -> torch.Tensor:
    """``(n, 1, 3, 3)`` inputs in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g)


@dataclass(frozen=True)
class Files:
    """TorchScript models and data files for the CLI tests."""

    models: list[Path]   # three 1x3x3 models
    other_shape: Path    # a 1x4x4 model
    data: Path           # 8 images 1x3x3 + labels


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("study_assets")
    paths = []
    with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript as deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        for k, (seed, bias) in enumerate(ZOO):
            p = root / f"m{k}.pt"
            torch.jit.trace(tiny_mlp(seed, bias), torch.rand(2, *SHAPE)).save(str(p))
            paths.append(p)
        torch.manual_seed(9)
        big = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
        torch.jit.trace(big, torch.rand(2, 1, 4, 4)).save(str(root / "big.pt"))
    x = tiny_inputs(8, seed=3).numpy()
    np.savez(root / "data.npz", x=x.astype(np.float32), y=np.arange(8, dtype=np.int64) % 3)
    return Files(paths, root / "big.pt", root / "data.npz")
