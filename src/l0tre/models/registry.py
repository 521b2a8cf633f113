"""The registry of built-in models (``l0tre models`` lists it)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ..paths import data_root, embedded_file

__all__ = ["BUILTIN", "EMBEDDED", "ModelInfo", "embedded_name", "list_models"]

EMBEDDED = "embedded"

_CIFAR_MEAN = (0.485, 0.456, 0.406)
_CIFAR_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelInfo:
    """One built-in model.

    Attributes:
        name: the name to pass to ``load_model``.
        description: one line for listings.
        input_shape: the pixel-space input ``(C, H, W)``, values in ``[0, 1]``.
        source: the file, relative to the data root, or ``"embedded"`` (package data).
        output: ``"logits"`` or ``"probabilities"``.
        mean: per-channel normalisation mean applied inside the classifier, or ``None``.
        std: per-channel normalisation std, or ``None``.
        reference: published / verified accuracy, for listings.
        arch: the built-in architecture of a state-dict file (``None``: the model's name).
    """

    name: str
    description: str
    input_shape: tuple[int, int, int]
    source: str
    output: str = "logits"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    reference: str = ""
    arch: str | None = None

    def locate(self, root: str | os.PathLike[str] | None = None) -> Path | None:
        """The file this model loads from, or ``None`` when it is not available here."""
        if self.source == EMBEDDED:
            path = embedded_file(embedded_name(self.name))
            return path if path.is_file() else None
        base = data_root(root)
        if base is None or not (base / self.source).is_file():
            return None
        return base / self.source


BUILTIN: Mapping[str, ModelInfo] = MappingProxyType(
    {
        "paper-mnist": ModelInfo(
            "paper-mnist",
            "L0-TRE paper MNIST CNN (Case Study Three; Keras weights converted, embedded)",
            (1, 28, 28),
            EMBEDDED,
            reference="99.36% on the MNIST test set",
        ),
        "paper-mnist-softmax": ModelInfo(
            "paper-mnist-softmax",
            "L0-TRE paper MNIST CNN with softmax output (Case Study Five, mnist_complicated.h5)",
            (1, 28, 28),
            "models/L0-TRE/Case_Study_Five/saved_models/mnist_complicated.h5",
            output="probabilities",
            reference="99.38% on the MNIST test set",
        ),
        "paper-sdnn": ModelInfo(
            "paper-sdnn",
            "L0-TRE paper sDNN, 14x14 MNIST (Case Study One; MATLAB weights converted, embedded)",
            (1, 14, 14),
            EMBEDDED,
            reference="paper 98.73% on its 14x14 MNIST test set; 98.59% on mnist14:test",
        ),
        "cifar10-resnet20": ModelInfo(
            "cifar10-resnet20",
            "CIFAR-10 ResNet-20, option-A shortcuts (akamaster pytorch_resnet_cifar10)",
            (3, 32, 32),
            "models/cifar10/akamaster_resnet20-12fca82f.th",
            mean=_CIFAR_MEAN,
            std=_CIFAR_STD,
            reference="91.78% on the CIFAR-10 test set; 94/100 on the bundled images",
        ),
        "mnist-cnn-tutorial": ModelInfo(
            "mnist-cnn-tutorial",
            "MNIST CNN of the Kolter & Madry adversarial-robustness tutorial",
            (1, 28, 28),
            "models/mnist/advtutorial_model_cnn.pt",
            reference="98.90% on the MNIST test set",
        ),
        "mnist-smallcnn-trades": ModelInfo(
            "mnist-smallcnn-trades",
            "MNIST SmallCNN adversarially trained with TRADES (from the sigma-zero paper's repository)",
            (1, 28, 28),
            "models/mnist/sigmazero_mnist_smallcnn_robust_trades.pth",
            reference="99.48% on the MNIST test set",
            arch="mnist-smallcnn",
        ),
    }
)


def embedded_name(name: str) -> str:
    """The package-data file of the embedded built-in model ``name`` (in ``l0tre/data/``)."""
    return f"{name.replace('-', '_')}.pt"


def list_models() -> list[ModelInfo]:
    """All built-in models, in registry order."""
    return list(BUILTIN.values())
