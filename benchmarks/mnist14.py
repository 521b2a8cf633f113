"""MNIST CNNs with the architecture of the paper's sDNN (Table 2), for benchmarks.

conv 2×2×8 + BN + ReLU, conv 2×2×16 + BN + ReLU, conv 2×2×32 + BN + ReLU, FC → 10, on MNIST
downsampled to 14×14 by 2×2 average pooling (``sdnn14``, the paper's input size) or on the
full 28×28 images (``sdnn28``). The paper's own sDNN is a MATLAB object in the shared data whose
input resizing we cannot reproduce exactly, so the benchmarks train these stand-ins
deterministically (seeded, one epoch on the first 10,000 training images, one thread whatever
the caller's setting; 14×14: ≈ 7 s, 96.75 % test accuracy).
Imported by the benchmark scripts that sit beside it (``import mnist14``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

import l0tre
from l0tre.data import Dataset

__all__ = ["data_root", "images", "images14", "sdnn", "sdnn14", "sdnn28"]

HERE = Path(__file__).resolve().parent


def data_root() -> str:
    return os.environ.get("L0TRE_DATA", str(HERE.parent.parent / "shared" / "data"))


def images(size: int, split: str = "test", start: int = 0, limit: int | None = None) -> Dataset:
    """MNIST ``split`` at ``size`` × ``size`` (28, or 14 by 2×2 average pooling), with labels."""
    if size not in (14, 28):
        raise ValueError(f"size: expected 14 or 28, got {size}")
    ds = l0tre.load_data(f"mnist:{split}", data_root=data_root(), start=start, limit=limit)
    if size == 14:
        ds.x = nn.functional.avg_pool2d(ds.x, 2)
    return ds


def images14(split: str = "test", start: int = 0, limit: int | None = None) -> Dataset:
    """MNIST ``split`` downsampled to 14×14 ``(N, 1, 14, 14)``, with labels."""
    return images(14, split, start, limit)


def sdnn(size: int = 14, epochs: int = 1, train_images: int = 10_000) -> l0tre.Classifier:
    """The trained stand-in sDNN for ``size`` × ``size`` inputs (deterministic for a given torch
    build: trained on one thread, since the summation order of multi-threaded kernels changes
    the weights)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(size, epochs, train_images)
    finally:
        torch.set_num_threads(threads)


def sdnn14(epochs: int = 1, train_images: int = 10_000) -> l0tre.Classifier:
    """The 14×14 stand-in sDNN (the paper's input size)."""
    return sdnn(14, epochs, train_images)


def sdnn28(epochs: int = 1, train_images: int = 10_000) -> l0tre.Classifier:
    """The same architecture on full-size 28×28 MNIST."""
    return sdnn(28, epochs, train_images)


def _train(size: int, epochs: int, train_images: int) -> l0tre.Classifier:
    torch.manual_seed(0)
    ds = images(size, "train", limit=train_images)
    if ds.y is None:
        raise ValueError("mnist:train: expected labels")
    layers: list[nn.Module] = []
    c = 1
    for width in (8, 16, 32):
        layers += [nn.Conv2d(c, width, 2), nn.BatchNorm2d(width), nn.ReLU()]
        c = width
    side = size - 3
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * side * side, 10))
    opt = torch.optim.Adam(net.parameters(), 5e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(ds.x.shape[0], generator=gen)
        for i in range(0, ds.x.shape[0], 128):
            idx = order[i : i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(net(ds.x[idx]), ds.y[idx]).backward()
            opt.step()
    return l0tre.Classifier(net.eval(), input_shape=(1, size, size), name=f"mnist{size}-sdnn")
