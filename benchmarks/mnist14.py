"""A 14×14 MNIST CNN with the architecture of the paper's sDNN (Table 2), for benchmarks.

conv 2×2×8 + BN + ReLU, conv 2×2×16 + BN + ReLU, conv 2×2×32 + BN + ReLU, FC → 10, on MNIST
downsampled to 14×14 by 2×2 average pooling. The paper's own sDNN is a MATLAB object in the
shared data whose input resizing we cannot reproduce exactly, so the benchmarks train this
stand-in deterministically (seeded, one epoch, ≈ 7 s on 2 idle CPU cores; 96.75 % test accuracy)
on the first 10,000 training images (one thread, whatever the caller's setting).
Imported by the benchmark scripts that sit beside it (``import mnist14``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

import l0tre
from l0tre.data import Dataset

__all__ = ["data_root", "images14", "sdnn14"]

HERE = Path(__file__).resolve().parent


def data_root() -> str:
    return os.environ.get("L0TRE_DATA", str(HERE.parent.parent / "shared" / "data"))


def images14(split: str = "test", start: int = 0, limit: int | None = None) -> Dataset:
    """MNIST ``split`` downsampled to 14×14 ``(N, 1, 14, 14)``, with labels."""
    ds = l0tre.load_data(f"mnist:{split}", data_root=data_root(), start=start, limit=limit)
    ds.x = nn.functional.avg_pool2d(ds.x, 2)
    return ds


def sdnn14(epochs: int = 1, train_images: int = 10_000) -> l0tre.Classifier:
    """The trained stand-in sDNN (deterministic for a given torch build: trained on one thread,
    since the summation order of multi-threaded kernels changes the weights)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(epochs, train_images)
    finally:
        torch.set_num_threads(threads)


def _train(epochs: int, train_images: int) -> l0tre.Classifier:
    torch.manual_seed(0)
    ds = images14("train", limit=train_images)
    if ds.y is None:
        raise ValueError("mnist:train: expected labels")
    layers: list[nn.Module] = []
    c = 1
    for width in (8, 16, 32):
        layers += [nn.Conv2d(c, width, 2), nn.BatchNorm2d(width), nn.ReLU()]
        c = width
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * 11 * 11, 10))
    opt = torch.optim.Adam(net.parameters(), 5e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(ds.x.shape[0], generator=gen)
        for i in range(0, ds.x.shape[0], 128):
            idx = order[i : i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(net(ds.x[idx]), ds.y[idx]).backward()
            opt.step()
    return l0tre.Classifier(net.eval(), input_shape=(1, 14, 14), name="mnist14-sdnn")
