"""Built-in network architectures (plain ``torch.nn`` modules, no lambdas).

Every architecture here takes inputs ``(N, C, H, W)`` *after* the classifier's
normalisation and returns raw scores ``(N, 10)``. The registry :data:`ARCHITECTURES`
maps a name (used by ``load_model(..., arch=NAME)``) to a builder and its input shape.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "BasicBlock",
    "ResNetCifar",
    "ShortcutA",
    "mnist_cnn_tutorial",
    "mnist_smallcnn",
    "paper_mnist_cnn",
    "resnet20",
]


def paper_mnist_cnn(softmax: bool = False) -> nn.Sequential:
    """The L0-TRE paper's MNIST CNN (Case Study Three / Five), NCHW.

    ``(N, 1, 28, 28)`` → conv32-conv32-pool-conv64-conv64-pool-fc200-fc200-fc10 →
    ``(N, 10)`` logits, or probabilities when ``softmax`` is true. The layer indices match
    what :func:`l0tre.models.keras_h5.keras_to_torch` produces from the paper's Keras
    files (Dropout is dropped: it is the identity at inference).
    """
    layers: list[nn.Module] = [
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(1024, 200),
        nn.ReLU(),
        nn.Linear(200, 200),
        nn.ReLU(),
        nn.Linear(200, 10),
    ]
    if softmax:
        layers.append(nn.Softmax(dim=1))
    return nn.Sequential(*layers)


def mnist_cnn_tutorial() -> nn.Sequential:
    """The CNN of the Kolter & Madry adversarial-robustness tutorial.

    ``(N, 1, 28, 28)`` in ``[0, 1]`` (no normalisation) → ``(N, 10)`` logits.
    """
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(7 * 7 * 64, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def mnist_smallcnn() -> nn.Sequential:
    """The TRADES / σ-zero MNIST SmallCNN (state-dict keys ``feature_extractor.conv1..4`` and
    ``classifier.fc1..3``).

    ``(N, 1, 28, 28)`` in ``[0, 1]`` (no normalisation) → conv32-conv32-pool-conv64-conv64-pool
    -fc200-fc200-fc10 → ``(N, 10)`` logits (its Dropout is the identity at inference, left out).
    """
    features = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 32, 3)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(32, 32, 3)), ("relu2", nn.ReLU()), ("maxpool1", nn.MaxPool2d(2, 2)),
        ("conv3", nn.Conv2d(32, 64, 3)), ("relu3", nn.ReLU()),
        ("conv4", nn.Conv2d(64, 64, 3)), ("relu4", nn.ReLU()), ("maxpool2", nn.MaxPool2d(2, 2)),
    ]))
    classifier = nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(64 * 4 * 4, 200)), ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(200, 200)), ("relu2", nn.ReLU()), ("fc3", nn.Linear(200, 10)),
    ]))
    return nn.Sequential(OrderedDict([
        ("feature_extractor", features), ("flatten", nn.Flatten()), ("classifier", classifier),
    ]))


class ShortcutA(nn.Module):
    """Option-A (parameter-free) ResNet shortcut.

    ``(N, C, H, W)`` → ``(N, C + 2 * pad, ceil(H/2), ceil(W/2))``: keeps every second pixel
    and zero-pads ``pad`` channels on each side.
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = int(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection: ``(N, Cin, H, W)`` →
    ``(N, planes, H/stride, W/stride)``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = ShortcutA(planes // 4)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet (He et al. 2016, Sec. 4.2) with option-A shortcuts.

    ``(N, 3, 32, 32)`` (normalised) → ``(N, num_classes)`` logits. State-dict keys match
    the akamaster ``pytorch_resnet_cifar10`` checkpoints (without their ``module.`` prefix).
    """

    def __init__(self, num_blocks: tuple[int, int, int], num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, 16, num_blocks[0], 1)
        self.layer2 = self._make_layer(16, 32, num_blocks[1], 2)
        self.layer3 = self._make_layer(32, 64, num_blocks[2], 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(64, num_classes)

    @staticmethod
    def _make_layer(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.flatten(self.pool(out)))


def resnet20(num_classes: int = 10) -> ResNetCifar:
    """ResNet-20 for CIFAR-10: ``(N, 3, 32, 32)`` → ``(N, num_classes)``."""
    return ResNetCifar((3, 3, 3), num_classes)


@dataclass(frozen=True)
class ArchSpec:
    """A built-in architecture: its builder and the input shape ``(C, H, W)`` it expects."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]
    description: str


ARCHITECTURES: Mapping[str, ArchSpec] = MappingProxyType(
    {
        "paper-mnist": ArchSpec(
            "paper-mnist", paper_mnist_cnn, (1, 28, 28), "L0-TRE paper MNIST CNN (logits)"
        ),
        "mnist-cnn-tutorial": ArchSpec(
            "mnist-cnn-tutorial", mnist_cnn_tutorial, (1, 28, 28), "adversarial-tutorial MNIST CNN"
        ),
        "mnist-smallcnn": ArchSpec(
            "mnist-smallcnn", mnist_smallcnn, (1, 28, 28), "TRADES / σ-zero MNIST SmallCNN (logits)"
        ),
        "cifar10-resnet20": ArchSpec(
            "cifar10-resnet20", resnet20, (3, 32, 32), "CIFAR ResNet-20, option-A shortcuts"
        ),
    }
)
