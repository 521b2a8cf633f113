"""Fixtures of the CLI tests: a tiny TorchScript model, tiny data sets, a subprocess runner."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn


class TinyNet(nn.Module):
    """A small CNN on 1x6x6 images with 3 classes (random weights, fixed seed)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class SteadyNet(nn.Module):
    """Always class 0 by a wide margin: nothing converges, every level runs in full (slow on purpose)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1).sum(1, keepdim=True) * self.w
        return torch.cat([s + 10.0, s, s - 1.0], 1)


@dataclass(frozen=True)
class Assets:
    """Paths of the generated files."""

    root: Path
    model: Path        # TorchScript TinyNet, input 1x6x6
    steady: Path       # TorchScript SteadyNet
    data: Path         # 6 float images 1x6x6 + labels
    data_uint8: Path   # the same as uint8 0..255
    data_nolabels: Path
    data_small: Path   # 1x5x5 images: shape mismatch
    data_range: Path   # values up to 2.0: out of range
    corrupt_model: Path
    corrupt_data: Path


def make_assets(root: Path) -> Assets:
    """Write the tiny models and data sets into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = TinyNet().eval()
    example = torch.rand(2, 1, 6, 6)
    with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript as deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(net, example).save(str(root / "tiny.pt"))
        torch.jit.script(SteadyNet().eval()).save(str(root / "steady.pt"))
    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 6, 6)).astype(np.float32)
    with torch.no_grad():
        pred = net(torch.from_numpy(x)).argmax(1).numpy()
    y = pred.copy()
    y[5] = (y[5] + 1) % 3  # one wrong label: accuracy 5/6
    np.savez(root / "data.npz", x=x, y=y.astype(np.int64))
    np.savez(root / "data_uint8.npz", x=(x * 255).round().astype(np.uint8), y=y.astype(np.int64))
    np.save(root / "data_nolabels.npy", x)
    np.savez(root / "data_small.npz", x=rng.random((3, 1, 5, 5)).astype(np.float32))
    np.savez(root / "data_range.npz", x=(2 * x).astype(np.float32))
    (root / "corrupt.pt").write_bytes(b"PK\x03\x04 this is not a model" * 10)
    (root / "corrupt.npz").write_bytes(b"not a zip file at all")
    return Assets(root, root / "tiny.pt", root / "steady.pt", root / "data.npz", root / "data_uint8.npz",
                  root / "data_nolabels.npy", root / "data_small.npz", root / "data_range.npz",
                  root / "corrupt.pt", root / "corrupt.npz")


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """One torch thread inside (tiny batches on a shared 2-core machine); restored afterwards."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """In-process runs use one torch thread (also imported by tests/test_report.py and
    tests/test_outdir.py)."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    """The tiny models and data sets (built once per session)."""
    return make_assets(tmp_path_factory.mktemp("cli_assets"))


def cli_env() -> dict[str, str]:
    """Environment for CLI subprocesses: one thread, no shared data root, no tqdm noise."""
    env = dict(os.environ)
    env.pop("L0TRE_DATA", None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def run_cli(
    *args: str | os.PathLike[str], timeout: float = 120.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m l0tre ARGS`` in a subprocess; returns the completed process (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "l0tre", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=cli_env(), cwd=cwd,
    )


def popen_cli(*args: str | os.PathLike[str], cwd: Path | None = None) -> subprocess.Popen[str]:
    """``python -m l0tre ARGS`` started in the background (stdout/stderr piped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "l0tre", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=cwd,
    )
