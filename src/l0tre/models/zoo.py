"""The paper's architectures (Tables 2–11 of Ruan et al., IJCAI 2019), trainable with ``l0tre train``.

Every builder returns a plain ``torch.nn`` module that takes pixel-space inputs ``(N, C, H, W)``
in ``[0, 1]`` and returns raw scores ``(N, 10)`` (the paper's softmax / class-output layers are
left out: they do not change the label). Dropout is the identity at inference. Convolutions have
no padding (the MATLAB and Keras default the paper used) except in the sDNN, whose MATLAB file
records a padding of 1 on every side of its 2×2 convolutions (so its last map is 17×17×32).

The tables leave two things open, decided here and said in ``docs/studies.md``:

* Table 8 (DNN-4) is missing from the paper's text; DNN-4 is read as DNN-3 with the fully
  connected 128 layer and DNN-5 as DNN-4 plus dropout 0.5 (Tables 7 and 9).
* Table 7 (DNN-3) is garbled in the text; it is read as DNN-2 (Table 6) with batch normalisation
  after the second convolution, the difference the paper's observation iii) names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import nn

from .architectures import ArchSpec

__all__ = ["ZOO", "SubtractImage", "ZooArch", "case2_cifar", "case2_mnist", "dnn", "sdnn"]


class SubtractImage(nn.Module):
    """Subtracts a fixed image (MATLAB's ``zerocenter`` normalisation with its AverageImage).

    ``(N, C, H, W)`` → ``(N, C, H, W)``: ``x - average`` with ``average`` a buffer ``(C, H, W)``.
    """

    average: torch.Tensor

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.register_buffer("average", torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.average


def sdnn() -> nn.Sequential:
    """Table 2, the sDNN: ``(N, 1, 14, 14)`` → AverageImage subtracted → 3 × (conv 2×2, padding 1,
    batch norm, ReLU) with 8, 16, 32 filters → FC 17·17·32 → 10 → ``(N, 10)``.

    The layout is the MATLAB SeriesNetwork of the paper's ``sDNN_model.mat``; the ``average``
    buffer is the mean training image (set by training, or read from the file).
    """
    layers: list[nn.Module] = [SubtractImage((1, 14, 14))]
    channels = 1
    for out in (8, 16, 32):
        layers += [nn.Conv2d(channels, out, 2, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        channels = out
    layers += [nn.Flatten(), nn.Linear(17 * 17 * 32, 10)]
    return nn.Sequential(*layers)


def _convs(spec: tuple[tuple[int, bool], ...], channels: int) -> list[nn.Module]:
    """3×3 valid convolutions, each ``(filters, batch_norm)`` followed by ReLU."""
    layers: list[nn.Module] = []
    for out, bn in spec:
        layers.append(nn.Conv2d(channels, out, 3))
        if bn:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU())
        channels = out
    return layers


@dataclass(frozen=True)
class _Dnn:
    """One of the 28×28 DNNs: convolutions, an optional max-pool, dropouts and dense layers."""

    convs: tuple[tuple[int, bool], ...]
    hidden: int | None = None  # the fully connected hidden layer (None: conv → FC 10)
    pool: bool = False
    drop_conv: float = 0.0  # dropout after the convolutions
    drop_fc: float = 0.0  # dropout after the hidden layer

    def build(self) -> nn.Sequential:
        """``(N, 1, 28, 28)`` → ``(N, 10)``."""
        layers = _convs(self.convs, 1)
        side = 28 - 2 * len(self.convs)
        if self.pool:
            layers.append(nn.MaxPool2d(2))
            side //= 2
        if self.drop_conv:
            layers.append(nn.Dropout(self.drop_conv))
        layers.append(nn.Flatten())
        width = self.convs[-1][0] * side * side
        if self.hidden is not None:
            layers += [nn.Linear(width, self.hidden), nn.ReLU()]
            if self.drop_fc:
                layers.append(nn.Dropout(self.drop_fc))
            width = self.hidden
        layers.append(nn.Linear(width, 10))
        return nn.Sequential(*layers)


_DNNS: Mapping[int, _Dnn] = MappingProxyType({
    0: _Dnn(((32, False), (64, False)), hidden=128, pool=True, drop_conv=0.25, drop_fc=0.5),  # Table 3
    1: _Dnn(((32, False),)),  # Table 5
    2: _Dnn(((32, False), (64, False))),  # Table 6
    3: _Dnn(((32, False), (64, True))),  # Table 7
    4: _Dnn(((32, False), (64, True)), hidden=128),  # Table 8 (see the module docstring)
    5: _Dnn(((32, False), (64, True)), hidden=128, drop_conv=0.5),  # Table 9
    6: _Dnn(((32, False), (64, False), (128, True)), hidden=128, drop_conv=0.5),  # Table 10
    7: _Dnn(((16, False), (32, True), (64, True), (128, True)), hidden=256, drop_conv=0.5, drop_fc=0.5),  # Table 11
})


def dnn(i: int) -> nn.Sequential:
    """DNN-``i`` of the paper (``i`` in 0..7; Tables 3, 5–11): ``(N, 1, 28, 28)`` → ``(N, 10)``."""
    if isinstance(i, bool) or not isinstance(i, int) or i not in _DNNS:
        raise ValueError(f"i: expected an integer in 0..7, got {i!r}")
    return _DNNS[i].build()


def _case2(channels: int, width: int, hidden: int, side: int) -> nn.Sequential:
    """Table 4: conv-conv-pool-conv-conv-pool-FC-dropout 0.5-FC-FC10, all ReLU."""
    layers = _convs(((width, False), (width, False)), channels)
    layers.append(nn.MaxPool2d(2))
    layers += _convs(((2 * width, False), (2 * width, False)), width)
    layers += [nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * width * side * side, hidden), nn.ReLU(),
               nn.Dropout(0.5), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)]
    return nn.Sequential(*layers)


def case2_mnist() -> nn.Sequential:
    """Table 4, MNIST column: ``(N, 1, 28, 28)`` → conv32-conv32-pool-conv64-conv64-pool-fc200-fc200-fc10."""
    return _case2(1, 32, 200, 4)


def case2_cifar() -> nn.Sequential:
    """Table 4, CIFAR-10 column: ``(N, 3, 32, 32)`` → conv64-conv64-pool-conv128-conv128-pool-fc256-fc256-fc10."""
    return _case2(3, 64, 256, 5)


@dataclass(frozen=True)
class ZooArch(ArchSpec):
    """A paper architecture with how ``l0tre train`` trains it.

    Attributes (beyond :class:`ArchSpec`):
        table: where the paper describes it.
        data: the training/test data spec prefix (``mnist``, ``mnist14`` or ``cifar10``).
        epochs: the default number of training epochs (minutes on 2 CPU cores; the paper
            trained 20–50 epochs on a GPU).
        paper_accuracy: the test accuracy the paper reports, in percent (``None``: not given).
    """

    table: str = ""
    data: str = "mnist"
    epochs: int = 2
    paper_accuracy: float | None = None


def _dnn_builder(i: int) -> Callable[[], nn.Module]:
    """A builder of DNN-``i`` (a named function for the registry)."""

    def build() -> nn.Module:
        return dnn(i)

    build.__name__ = f"dnn_{i}"
    return build


_MNIST = (1, 28, 28)
_PAPER_DNN_ACC = (99.16, 97.75, 97.95, 98.38, 99.06, 99.16, 99.13, 99.41)
_DNN_EPOCHS = (3, 5, 3, 3, 3, 3, 2, 2)

ZOO: Mapping[str, ZooArch] = MappingProxyType({
    "sdnn": ZooArch("sdnn", sdnn, (1, 14, 14), "paper sDNN, 14x14 MNIST (Table 2)", table="Table 2",
                    data="mnist14", epochs=5, paper_accuracy=98.73),
    **{
        f"dnn-{i}": ZooArch(f"dnn-{i}", _dnn_builder(i), _MNIST, f"paper DNN-{i} (Table {3 if i == 0 else i + 4})",
                            table=f"Table {3 if i == 0 else i + 4}", epochs=_DNN_EPOCHS[i],
                            paper_accuracy=_PAPER_DNN_ACC[i])
        for i in range(8)
    },
    "case2-mnist": ZooArch("case2-mnist", case2_mnist, _MNIST, "paper attack model, MNIST (Table 4)",
                           table="Table 4", epochs=2, paper_accuracy=99.36),
    "case2-cifar": ZooArch("case2-cifar", case2_cifar, (3, 32, 32), "paper attack model, CIFAR-10 (Table 4)",
                           table="Table 4", data="cifar10", epochs=2, paper_accuracy=78.30),
})
