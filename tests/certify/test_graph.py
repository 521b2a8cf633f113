"""Graph conversion: supported models match their forward pass, unsupported layers fail
with a ValueError naming the layer."""

from __future__ import annotations

import pytest
import torch
from _certify_helpers import zoo
from torch import nn

from l0tre.certify import UnsupportedLayerError, bound_model, build_graph
from l0tre.certify.graph import normalisation_of


@pytest.mark.parametrize("name", list(zoo()))
def test_graph_matches_model(name: str) -> None:
    model, shape, pre = zoo()[name]
    g = build_graph(model, shape, preprocessing=pre)
    x = torch.rand(5, *shape)
    norm = normalisation_of(pre)
    xin = x if norm is None else (x - torch.tensor(norm[0]).view(1, -1, 1, 1)) / torch.tensor(
        norm[1]).view(1, -1, 1, 1)
    with torch.no_grad():
        ref = model(xin).double()
    assert torch.allclose(g.forward(x), ref, atol=1e-5)
    assert g.dtype == torch.float64


def test_training_mode_is_restored() -> None:
    model, shape, _ = zoo()["bn_pool"]
    model.train()
    build_graph(model, shape)
    assert all(m.training for m in model.modules())
    model.eval()


def test_softmax_tail_dropped_for_margins_only() -> None:
    model, shape, _ = zoo()["conv_pool"]
    soft = nn.Sequential(model, nn.Softmax(dim=1))
    g = build_graph(soft, shape)
    assert g.softmax_dropped == "softmax"
    lo = torch.zeros(1, *shape)
    with pytest.raises(UnsupportedLayerError):
        bound_model(soft, lo, lo + 0.1)
    lb, ub = bound_model(soft, lo, lo + 0.1, labels=0)
    assert lb.shape == (1, 3) and bool((lb <= ub).all())


class _Sig(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.act = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x.flatten(1)))


class _Tanh(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x.flatten(1)))


class _Lstm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(2, 3, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.flatten(1, 2))
        return out[:, -1]


class _Product(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.flatten(1)
        return y * y


class _Branchy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x.flatten(1)
        return -x.flatten(1)


@pytest.mark.parametrize(
    ("model", "shape", "needle"),
    [
        (_Sig(), (1, 2, 2), "'act' (Sigmoid)"),
        (_Tanh(), (1, 2, 2), "tanh"),
        (_Lstm(), (1, 2, 2), "'rnn' (LSTM)"),
        (nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.LeakyReLU(), nn.Linear(4, 2)), (1, 2, 2),
         "'2' (LeakyReLU)"),
        (_Product(), (1, 2, 2), "mul"),
        (_Branchy(), (1, 2, 2), "trace"),
        (nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Softmax(dim=1), nn.Linear(4, 2)),
         (1, 2, 2), "Softmax"),
    ],
)
def test_unsupported_layers_are_named(model: nn.Module, shape: tuple[int, int, int],
                                      needle: str) -> None:
    with pytest.raises(ValueError) as info:
        build_graph(model, shape)
    assert isinstance(info.value, UnsupportedLayerError)
    assert needle in str(info.value)


def test_preprocessing_validation() -> None:
    model, shape, _ = zoo()["mlp"]
    with pytest.raises(ValueError):
        build_graph(model, shape, preprocessing=((0.1,), (0.0,)))
    with pytest.raises(ValueError):
        build_graph(model, shape, preprocessing="imagenet")
