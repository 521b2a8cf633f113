"""Training the paper's architectures (:data:`~l0tre.models.zoo.ZOO`) on MNIST, as ``l0tre train`` does.

The optimiser follows the paper's setting (Appendices F and I: MATLAB's SGDM, mini-batch 128) with
MATLAB's defaults (learning rate 0.01, momentum 0.9, L2 regularisation 1e-4); the number of epochs
is smaller (see :class:`~l0tre.models.zoo.ZooArch`), so that each fits in minutes on 2 CPU cores.
Training is deterministic under a seed on CPU for a fixed torch thread count: the initial weights,
the dropout masks and the order of the mini-batches come from the seed only.

A trained model is saved as a dict ``{"format", "arch", "state_dict", "test_accuracy", "epochs",
"seed", "train_images"}`` (plain tensors and numbers, loadable with ``weights_only=True``);
``load_model(PATH)`` reads the architecture name from it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..atomic import atomic_torch_save
from ..data import Dataset, load_data
from ..validate import optional_int, positive_float, positive_int
from .zoo import ZOO, SubtractImage, ZooArch

__all__ = ["SAVE_FORMAT", "TrainConfig", "TrainResult", "accuracy", "save_trained", "train"]

SAVE_FORMAT = "l0tre-zoo-1"


@dataclass(frozen=True)
class TrainConfig:
    """What :func:`train` does (validated on construction).

    Attributes:
        arch: a name of :data:`~l0tre.models.zoo.ZOO`.
        epochs: passes over the training set (``None``: the architecture's default).
        seed: the seed of the initial weights, dropout and batch order.
        batch_size: images per SGD step (the paper's 128).
        lr, momentum, weight_decay: SGD with momentum (MATLAB's SGDM defaults).
        limit: train on the first ``limit`` training images only (``None``: all 60 000).
        test_limit: measure the accuracy on the first ``test_limit`` test images (``None``: all).
        data_root: where the shared data lives (else ``$L0TRE_DATA``).
        show_progress: a tqdm bar per epoch.
    """

    arch: str
    epochs: int | None = None
    seed: int = 0
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    limit: int | None = None
    test_limit: int | None = None
    data_root: str | os.PathLike[str] | None = None
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.arch not in ZOO:
            raise ValueError(f"arch: expected one of {', '.join(ZOO)}, got {self.arch!r}")
        if ZOO[self.arch].data == "cifar10":
            raise ValueError(
                f"arch: {self.arch!r} trains on CIFAR-10, but no CIFAR-10 training set is on disk (the shared "
                "data holds only the first 100 CIFAR-10 test images, which are no training set); train it "
                "where the 50 000 training images are"
            )
        optional_int("epochs", self.epochs)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed: expected an integer, got {type(self.seed).__name__}")
        positive_int("batch_size", self.batch_size)
        positive_float("lr", self.lr)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum: expected a value in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0.0:
            raise ValueError(f"weight_decay: expected a value >= 0, got {self.weight_decay!r}")
        optional_int("limit", self.limit)
        optional_int("test_limit", self.test_limit)

    @property
    def spec(self) -> ZooArch:
        """The architecture trained."""
        return ZOO[self.arch]

    @property
    def n_epochs(self) -> int:
        """The epochs actually run."""
        return self.epochs if self.epochs is not None else self.spec.epochs


@dataclass(frozen=True)
class TrainResult:
    """A trained model.

    Attributes:
        arch: the architecture name.
        module: the trained network in eval mode, ``(N, C, H, W)`` pixels → ``(N, 10)`` scores.
        test_accuracy: the fraction of correctly classified test images, in ``[0, 1]``.
        test_images: how many test images it was measured on.
        train_images: how many training images were used.
        epochs: epochs run.
        seed: the seed.
        seconds: wall-clock time of the training (without the test).
        losses: mean training loss per epoch, ``(epochs,)``.
    """

    arch: str
    module: nn.Module
    test_accuracy: float
    test_images: int
    train_images: int
    epochs: int
    seed: int
    seconds: float
    losses: tuple[float, ...]

    def to_dict(self) -> dict[str, object]:
        """Everything but the module, JSON-ready."""
        return {"arch": self.arch, "test_accuracy": self.test_accuracy, "test_images": self.test_images,
                "train_images": self.train_images, "epochs": self.epochs, "seed": self.seed,
                "seconds": self.seconds, "losses": list(self.losses)}


def _data(config: TrainConfig, split: str, limit: int | None) -> Dataset:
    """The training or test images of the architecture (``mnist`` or ``mnist14``)."""
    return load_data(f"{config.spec.data}:{split}", data_root=config.data_root, limit=limit)


def _epoch(module: nn.Module, opt: torch.optim.Optimizer, data: Dataset, order: torch.Tensor,
           config: TrainConfig, bar: tqdm | None) -> float:
    """One pass in the order ``order`` ``(N,)``; returns the mean loss."""
    if data.y is None:
        raise ValueError(f"data: expected labelled training images, got none in {data.name!r}")
    module.train()
    total, seen = 0.0, 0
    for start in range(0, len(order), config.batch_size):
        idx = order[start : start + config.batch_size]
        xb, yb = data.x[idx], data.y[idx]
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(module(xb), yb)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
        if bar is not None:
            bar.update(len(idx))
    return total / max(seen, 1)


@torch.no_grad()
def accuracy(module: nn.Module, data: Dataset, batch_size: int = 1000) -> float:
    """The fraction of ``data`` (images ``(N, C, H, W)``, labels ``(N,)``) that ``module`` classifies right."""
    if data.y is None or len(data) == 0:
        raise ValueError(f"data: expected labelled images, got {len(data)} images with labels={data.y is not None}")
    module.eval()
    right = 0
    for start in range(0, len(data), batch_size):
        out = module(data.x[start : start + batch_size])
        right += int((out.argmax(1) == data.y[start : start + batch_size]).sum())
    return right / len(data)


def train(config: TrainConfig) -> TrainResult:
    """Train ``config.arch`` from scratch on the MNIST training images; measure the test accuracy.

    Raises:
        ValueError: a bad config; missing training data (no data root).
    """
    train_set = _data(config, "train", config.limit)
    test_set = _data(config, "test", config.test_limit)
    torch.manual_seed(config.seed)
    module = config.spec.build()
    for layer in module.modules():
        if isinstance(layer, SubtractImage):  # MATLAB's zerocenter: the mean training image
            layer.average.copy_(train_set.x.mean(0))
    opt = torch.optim.SGD(module.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    order_gen = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    began = time.perf_counter()
    for epoch in range(config.n_epochs):
        order = torch.randperm(len(train_set), generator=order_gen)
        with tqdm(total=len(order), desc=f"{config.arch} epoch {epoch + 1}/{config.n_epochs}", unit="img",
                  disable=not config.show_progress, leave=False) as bar:
            losses.append(_epoch(module, opt, train_set, order, config, bar))
    seconds = time.perf_counter() - began
    acc = accuracy(module, test_set)
    return TrainResult(config.arch, module.eval(), acc, len(test_set), len(train_set), config.n_epochs,
                       config.seed, seconds, tuple(losses))


def save_trained(result: TrainResult, path: str | os.PathLike[str], *, argument: str | None = "--out") -> Path:
    """Write ``result`` atomically as a weights-only torch file that ``load_model(path)`` reads."""
    payload = {
        "format": SAVE_FORMAT,
        "arch": result.arch,
        "state_dict": {k: v.detach().cpu().clone() for k, v in result.module.state_dict().items()},
        "test_accuracy": float(result.test_accuracy),
        "test_images": int(result.test_images),
        "train_images": int(result.train_images),
        "epochs": int(result.epochs),
        "seed": int(result.seed),
    }
    atomic_torch_save(payload, path, argument=argument)
    return Path(path)
