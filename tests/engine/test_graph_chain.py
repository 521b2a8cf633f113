"""Incremental windows through residual networks (:mod:`l0tre.execution.graph_chain`): every
row equals the plain forward pass (float64 oracle), for pixel and element features, 1–3
changed pixels, borders, strided/downsampling blocks, padded max pooling and functional ReLUs."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import l0tre
from l0tre.execution.graph_chain import GraphPrefix, build_chain
from l0tre.execution.incremental import IncrementalPrefix
from l0tre.models.architectures import resnet20


class _Block(nn.Module):
    """Basic or bottleneck residual block with a conv shortcut when the shape changes."""

    def __init__(self, cin: int, width: int, stride: int, bottleneck: bool) -> None:
        super().__init__()
        cout = 2 * width if bottleneck else width
        if bottleneck:
            self.body = nn.Sequential(nn.Conv2d(cin, width, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                      nn.Conv2d(width, width, 3, stride, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.Conv2d(width, cout, 1), nn.BatchNorm2d(cout))
        else:
            self.body = nn.Sequential(nn.Conv2d(cin, width, 3, stride, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.Conv2d(width, width, 3, 1, 1), nn.BatchNorm2d(width))
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        out += self.skip(x)
        return F.relu(out)


def _resnet(bottleneck: bool, relu_before_pool: bool = True) -> nn.Module:
    stem: list[nn.Module] = [nn.Conv2d(3, 8, 5, 2, 2), nn.BatchNorm2d(8)]
    if relu_before_pool:
        stem.append(nn.ReLU())
    layers = [*stem, nn.MaxPool2d(3, 2, 1), _Block(8, 8, 1, bottleneck), _Block(16 if bottleneck else 8, 12, 2,
              bottleneck), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24 if bottleneck else 12, 5)]
    return nn.Sequential(*layers)


def _prepared(net: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return net.eval().double()


NETS = {
    "resnet20": (lambda: resnet20(), (3, 32, 32)),
    "basic": (lambda: _resnet(False), (3, 64, 64)),
    "bottleneck": (lambda: _resnet(True), (3, 64, 64)),
    "pool-of-negatives": (lambda: _resnet(False, relu_before_pool=False), (3, 64, 64)),
}


def _classifier(name: str) -> tuple[l0tre.Classifier, tuple[int, int, int]]:
    build, shape = NETS[name]
    net = _prepared(build())
    return l0tre.Classifier(net, device="cpu", input_shape=shape,
                            preprocessing={"mean": [0.4, 0.5, 0.45], "std": [0.2, 0.25, 0.3]}), shape


def _rows(shape: tuple[int, int, int], t: int, b: int, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    hw = shape[1] * shape[2]
    a = torch.randint(0, n, (b,), generator=gen)
    pix = torch.stack([torch.randperm(hw, generator=gen)[:t] for _ in range(b)])
    pix[0, 0], pix[1, 0] = 0, hw - 1  # corners
    pix[2, 0] = shape[2] - 1  # top-right
    if t > 1:
        pix[3, 1] = (pix[3, 0] + 1) % hw  # neighbours: their windows meet at once
        pix[3, 1] = torch.where(pix[3, 1] == pix[3, 0], (pix[3, 0] + 2) % hw, pix[3, 1])
    vals = torch.rand(b, t, shape[0], generator=gen, dtype=torch.float64)
    return a, pix, vals


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("t", [1, 2, 3])
def test_graph_rows_equal_the_forward_pass(name: str, t: int) -> None:
    clf, shape = _classifier(name)
    chain = GraphPrefix.trace(clf, shape, windows=t)
    assert chain is not None and chain.program is not None and chain.program.convs >= 2
    assert any(s.kind == "add" for s in chain.program.steps)
    x0 = torch.rand(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(t))
    a, pix, vals = _rows(shape, t, 24, 3, seed=10 + t)
    chain.chunk = 7  # several calls, the last one short
    out = chain.outputs(chain.base(x0), a, pix, vals)
    x = x0[a].clone()
    for j in range(t):
        x.view(x.shape[0], shape[0], -1)[torch.arange(x.shape[0]), :, pix[:, j]] = vals[:, j]
    torch.testing.assert_close(out, clf(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("t", [1, 2])
def test_graph_element_features_equal_the_forward_pass(t: int) -> None:
    clf, shape = _classifier("basic")
    chain = GraphPrefix.trace(clf, shape, windows=t)
    assert chain is not None
    x0 = torch.rand(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    a, pix, vals = _rows(shape, t, 16, 2, seed=5)
    gen = torch.Generator().manual_seed(6)
    ch = torch.randint(0, shape[0], (16, t), generator=gen)
    if t == 2:  # two channels of one pixel in the same row
        pix[5, 1], ch[5] = pix[5, 0], torch.tensor([0, 2])
    val1 = vals[:, :, :1]
    out = chain.outputs(chain.base(x0), a, pix, val1, channel=ch)
    x = x0[a].clone()
    flat = x.view(x.shape[0], shape[0], -1)
    for j in range(t):
        flat[torch.arange(16), ch[:, j], pix[:, j]] = val1[:, j, 0]
    torch.testing.assert_close(out, clf(x), rtol=0, atol=1e-10)


def test_max_pool_padding_reads_minus_infinity() -> None:
    """Without a ReLU before the padded max pool, zero padding would change border outputs."""
    clf, shape = _classifier("pool-of-negatives")
    chain = GraphPrefix.trace(clf, shape)
    assert chain is not None and chain.program is not None
    assert any(s.spatial is not None and s.spatial.op == "max" and s.spatial.padding != (0, 0)
               for s in chain.program.steps)
    x0 = torch.rand(2, *shape, dtype=torch.float64)
    a = torch.tensor([0, 1, 0])
    pix = torch.tensor([[0], [shape[2] - 1], [shape[1] * shape[2] - 1]])
    vals = torch.ones(3, 1, 3, dtype=torch.float64)
    out = chain.outputs(chain.base(x0), a, pix, vals)
    x = x0[a].clone()
    x.view(3, 3, -1)[torch.arange(3), :, pix[:, 0]] = vals[:, 0]
    torch.testing.assert_close(out, clf(x), rtol=0, atol=1e-10)


def test_build_chain_picks_the_graph_for_residual_nets_and_the_plain_chain_otherwise() -> None:
    clf, shape = _classifier("resnet20")
    assert isinstance(build_chain(clf, shape), GraphPrefix)
    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 12 * 12, 3)).eval()
    plain = l0tre.Classifier(seq, device="cpu", input_shape=(1, 16, 16))
    chain = build_chain(plain, (1, 16, 16))
    assert type(chain) is IncrementalPrefix and chain.supports_pairs


def test_no_program_without_a_windowable_layer() -> None:
    dense = nn.Sequential(nn.Flatten(), nn.Linear(48, 3)).eval()
    clf = l0tre.Classifier(dense, device="cpu", input_shape=(3, 4, 4))
    assert GraphPrefix.trace(clf, (3, 4, 4)) is None
    with pytest.raises(ValueError, match="windows"):
        GraphPrefix.trace(clf, (3, 4, 4), windows=0)


def test_graph_chain_survives_pickling_without_its_model() -> None:
    """As the Ray executor ships it: model detached, pickled, attached again."""
    clf, shape = _classifier("basic")
    chain = GraphPrefix.trace(clf, shape)
    assert chain is not None
    back = dataclasses.replace(pickle.loads(pickle.dumps(dataclasses.replace(chain, model=None))), model=clf)
    x0 = torch.rand(2, *shape, dtype=torch.float64)
    a, pix, vals = _rows(shape, 1, 8, 2, seed=1)
    torch.testing.assert_close(back.outputs(back.base(x0), a, pix, vals), chain.outputs(chain.base(x0), a, pix, vals),
                               rtol=0, atol=0)


def test_engine_bounds_are_the_same_with_the_graph_chain() -> None:
    """evaluate at t ≤ 2 (12 screened pixels) on a residual net: the chain forced on gives the plain
    path's results."""
    torch.manual_seed(1)
    net = _prepared(_resnet(False)).float()
    clf = l0tre.Classifier(net, device="cpu", input_shape=(3, 64, 64))
    x = torch.rand(2, 3, 64, 64)
    kw = {"epsilon": 1.0, "t_max": 2, "show_progress": False, "pixels": "top:12", "mode": "eager"}
    on = l0tre.evaluate(clf, x, incremental=True, **kw)
    off = l0tre.evaluate(clf, x, incremental=False, **kw)
    torch.testing.assert_close(on.lower, off.lower)
    torch.testing.assert_close(on.upper, off.upper)


def test_plain_chain_element_features_with_preprocessing_at_t2() -> None:
    """Regression: element features normalised each value with its own channel's mean / std
    (they were broadcast against every channel of the row at t ≥ 2)."""
    torch.manual_seed(2)
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 12 * 12, 3)).eval().double()
    clf = l0tre.Classifier(seq, device="cpu", input_shape=(3, 16, 16),
                           preprocessing={"mean": [0.1, 0.5, 0.9], "std": [0.2, 0.4, 0.8]})
    chain = IncrementalPrefix.build(clf, (3, 16, 16), windows=2)
    assert chain is not None
    x0 = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    a, pix, vals = _rows((3, 16, 16), 2, 12, 2, seed=4)
    ch = torch.tensor([[0, 2], [1, 0], [2, 1]] * 4)
    val1 = vals[:, :, :1]
    out = chain.outputs(chain.base(x0), a, pix, val1, channel=ch)
    x = x0[a].clone()
    for j in range(2):
        x.view(12, 3, -1)[torch.arange(12), ch[:, j], pix[:, j]] = val1[:, j, 0]
    torch.testing.assert_close(out, clf(x), rtol=0, atol=1e-10)
