"""Level-2 pair table (engine/pairs.py): exact against the plain forward pass, and the engine
gives the same results with and without it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import l0tre
from l0tre.execution.incremental import IncrementalPrefix
from l0tre.execution.pairs import PairTable

from .test_fastpath import _shifted, _spatial_net


@pytest.mark.parametrize(
    ("layers", "shape"),
    [
        ([("conv", 3, 1, 0), ("conv", 3, 1, 0), ("max", 2, 2, 0), ("conv", 3, 1, 0)], (1, 16, 16)),
        ([("conv", 3, 1, 1), ("bn", 0, 0, 0), ("conv", 5, 2, 2), ("avg", 2, 2, 0), ("conv", 3, 1, 1)], (3, 19, 23)),
        ([("conv", 4, 3, 1), ("max", 3, 2, 0), ("conv", 2, 1, 0)], (2, 30, 27)),
        ([("conv", 2, 1, 1), ("conv", 2, 1, 1), ("bn", 0, 0, 0)], (1, 9, 8)),
    ],
)
@pytest.mark.parametrize("conv", [-1, -2])
@pytest.mark.parametrize("shifted", [False, True])
def test_pair_table_matches_full_forward(
    layers: list[tuple[str, int, int, int]], shape: tuple[int, int, int], conv: int, shifted: bool,
) -> None:
    """Every pair of pixels the table calls disjoint (borders included), every colour pair of a
    3-level grid: outputs equal the model's (also behind a leading SubtractImage)."""
    net = _spatial_net(len(layers) + 10, shape[0], layers)
    c, h, w = shape
    net(torch.zeros(1, *shape, dtype=torch.float64))
    if shifted:
        net = _shifted(net, shape)
    net.eval()
    clf = l0tre.Classifier(net, preprocessing={"mean": [0.3] * c, "std": [0.7] * c})
    chain = IncrementalPrefix.build(clf, shape)
    assert chain is not None
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(2, *shape, generator=gen, dtype=torch.float64)
    levels = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    palette = torch.cartesian_prod(*[levels] * c).view(-1, c) if c > 1 else levels.view(-1, 1)
    table = PairTable.build(chain, x, palette, max_bytes=1 << 30, conv=conv)
    convs = sum(isinstance(sp.module, torch.nn.Conv2d) for sp in chain.spatial)
    if convs < -conv:
        assert table is None
        return
    assert table is not None
    # the sparse head applies where only ReLU/BatchNorm lie between L and Flatten → Linear
    mods = list(net)
    li = next(i for i, m in enumerate(mods) if m is chain.spatial[[
        i for i, sp in enumerate(chain.spatial) if isinstance(sp.module, torch.nn.Conv2d)][conv]].module)
    between = mods[li + 1 : next(i for i, m in enumerate(mods) if isinstance(m, torch.nn.Flatten))]
    simple = all(isinstance(m, (torch.nn.ReLU, torch.nn.BatchNorm2d)) for m in between)
    assert (table.head is not None) == simple
    n = h * w
    rows = 3000
    a = torch.randint(0, 2, (rows,), generator=gen)
    first = torch.randint(0, n, (rows,), generator=gen)
    pix = torch.stack([first, (first + torch.randint(1, n, (rows,), generator=gen)) % n], dim=1)
    pix[:4] = torch.tensor([[0, n - 1], [w - 1, n - w], [0, w - 1], [n - w, n - 1]])  # corners
    pix[4:100, 1] = (pix[4:100, 0] + 1) % n  # neighbours: their windows meet
    far = table.disjoint(pix)
    assert int(far.sum()) > 0
    # neighbours meet before the last conv unless that conv reads the pixels themselves
    assert bool(far[4:100].all()) == (table.in_win == (1, 1))
    col = torch.randint(0, palette.shape[0], (a.shape[0], 2), generator=gen)
    xb = x[a].clone()
    for j in range(2):
        xb.view(a.shape[0], c, -1)[torch.arange(a.shape[0]), :, pix[:, j]] = palette[col[:, j]]
    torch.testing.assert_close(table.outputs(a[far], pix[far], col[far]), clf(xb[far]), rtol=1e-10, atol=1e-10)
    if table.head is not None and bool((~far).any()):
        # the rows whose windows meet before L: the chain up to L, then the overlap correction
        meet = ~far
        got = table.chain_outputs(a[meet], pix[meet], col[meet], palette[col[meet]])
        torch.testing.assert_close(got, clf(xb[meet]), rtol=1e-10, atol=1e-10)


def test_pair_table_respects_its_memory_limit() -> None:
    net = _spatial_net(1, 1, [("conv", 3, 1, 0), ("conv", 3, 1, 0)])
    net(torch.zeros(1, 1, 12, 12, dtype=torch.float64))
    net.eval()
    chain = IncrementalPrefix.build(l0tre.Classifier(net), (1, 12, 12))
    assert chain is not None
    x = torch.rand(1, 1, 12, 12, dtype=torch.float64)
    palette = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    assert PairTable.build(chain, x, palette, max_bytes=1000) is None
    assert PairTable.build(chain, x, palette, max_bytes=1 << 30) is not None


def _pooled_net() -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 3), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(6 * 5 * 5, 3),
    )


def _wide_head_net() -> torch.nn.Sequential:
    """Conv → Flatten → a 40-output layer: the table has a sparse head that is not cheap."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 3), torch.nn.BatchNorm2d(6),
        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(6 * 10 * 10, 40), torch.nn.ReLU(),
        torch.nn.Linear(40, 3),
    )


@pytest.mark.parametrize("make", [_pooled_net, _wide_head_net])
def test_engine_same_results_with_and_without_pair_table(
    monkeypatch: pytest.MonkeyPatch, make: Callable[[], torch.nn.Sequential],
) -> None:
    built: list[int] = []
    orig = PairTable.build

    def build(*a: object, **k: object) -> PairTable | None:
        table = orig(*a, **k)  # type: ignore[arg-type]
        built.append(int(table is not None))
        return table

    monkeypatch.setattr(PairTable, "build", staticmethod(build))
    torch.manual_seed(0)
    net = make().double()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    net.eval()
    clf = l0tre.Classifier(net)
    x = torch.rand(3, 1, 14, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for use in (True, False):
        eng = l0tre.api.prepare(clf, x, epsilon=0.5, t_max=2, incremental=True)
        eng.plan.use_pairs = use
        results.append(list(eng.run())[-1])
    on, off = results
    assert on.t == off.t == 2 or bool((off.lower == off.upper).all())
    for name in ("lower", "upper", "found", "adversarial"):
        assert torch.equal(getattr(on, name), getattr(off, name)), name
    assert on.evaluations == off.evaluations
    assert built and all(built)  # the table was in use (one per level-2 shard of the first run)


@pytest.mark.parametrize(
    "last",
    [
        lambda: torch.nn.Conv2d(3, 4, 2, padding=1),
        lambda: torch.nn.Conv2d(3, 4, 3, stride=2, padding=1),
        lambda: torch.nn.Conv2d(3, 6, 3, padding=1, groups=3),
    ],
)
def test_pair_table_with_a_wide_head_matches_full_forward(last: Callable[[], torch.nn.Conv2d]) -> None:
    """A head with many outputs (K = 40 > CHEAP_MAX_OUTPUTS): every pair of pixels, from the
    single-pixel sums plus the correction on shared cells (through the chain where windows meet
    before the last convolution: strided and grouped last convolutions too) — all equal to the
    plain forward pass."""
    from l0tre.execution.sparse_head import CHEAP_MAX_OUTPUTS

    torch.manual_seed(5)
    shape = (1, 9, 9)
    convs = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), last(), torch.nn.ReLU())
    features = convs(torch.zeros(1, *shape)).numel()
    net = torch.nn.Sequential(
        *convs, torch.nn.Flatten(), torch.nn.Linear(features, 40), torch.nn.ReLU(), torch.nn.Linear(40, 3),
    ).double().eval()
    clf = l0tre.Classifier(net)
    chain = IncrementalPrefix.build(clf, shape)
    assert chain is not None
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(2, *shape, generator=gen, dtype=torch.float64)
    palette = torch.tensor([[0.0], [0.5], [1.0]], dtype=torch.float64)
    table = PairTable.build(chain, x, palette, max_bytes=1 << 30)
    assert table is not None and table.head is not None and not table.head.cheap
    assert table.head.weight.shape[2] == 40 > CHEAP_MAX_OUTPUTS
    conv = convs[2]
    # pairs meeting before L go through their interaction when every conv up to L has stride 1, groups 1
    assert (table.interaction is not None) == (conv.stride == (1, 1) and conv.groups == 1)
    n = 81
    i, j = torch.triu_indices(n, n, 1)
    pix = torch.stack([i, j], dim=1)
    rows = pix.shape[0]
    a = torch.randint(0, 2, (rows,), generator=gen)
    col = torch.randint(0, 3, (rows, 2), generator=gen)
    xb = x[a].clone()
    for k in range(2):
        xb.view(rows, 1, -1)[torch.arange(rows), :, pix[:, k]] = palette[col[:, k]]
    far = table.disjoint(pix)
    assert 0 < int(far.sum()) < rows
    torch.testing.assert_close(table.outputs(a[far], pix[far], col[far]), clf(xb[far]), rtol=1e-10, atol=1e-10)
    meet = ~far  # windows meet before the last convolution: the chain, then the shared cells
    got = table.chain_outputs(a[meet], pix[meet], col[meet], palette[col[meet]])
    torch.testing.assert_close(got, clf(xb[meet]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shifted", [False, True])
def test_pair_interaction_matches_full_forward_on_a_deep_chain(shifted: bool) -> None:
    """Four stride-1 convolutions (padding, BatchNorm, two channels, a leading SubtractImage),
    a wide head: every pair that meets before the last convolution, from the interaction of its
    two changes layer by layer, equals the plain forward pass — and the chain's result."""
    torch.manual_seed(8)
    shape = (2, 10, 9)
    convs = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.BatchNorm2d(3), torch.nn.ReLU(),
        torch.nn.Conv2d(3, 4, 2), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=2), torch.nn.Tanh(),
        torch.nn.Conv2d(4, 5, 3), torch.nn.BatchNorm2d(5), torch.nn.ReLU(),
    )
    for m in convs:
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    features = convs(torch.zeros(1, *shape)).numel()
    net = torch.nn.Sequential(
        *convs, torch.nn.Flatten(), torch.nn.Linear(features, 40), torch.nn.ReLU(), torch.nn.Linear(40, 3),
    ).double().eval()
    if shifted:
        net = _shifted(net, shape)
    clf = l0tre.Classifier(net, preprocessing={"mean": [0.4, 0.2], "std": [0.5, 0.9]})
    chain = IncrementalPrefix.build(clf, shape, max_share=1.0)
    assert chain is not None and len(chain.spatial) == 4
    gen = torch.Generator().manual_seed(9)
    x = torch.rand(2, *shape, generator=gen, dtype=torch.float64)
    palette = torch.tensor([[0.0, 1.0], [0.5, 0.0], [1.0, 1.0]], dtype=torch.float64)
    table = PairTable.build(chain, x, palette, max_bytes=1 << 30)
    assert table is not None and table.head is not None and table.interaction is not None
    assert len(table.interaction.stages) == 3
    n = shape[1] * shape[2]
    i, j = torch.triu_indices(n, n, 1)
    pix = torch.stack([i, j], dim=1)
    pix = torch.cat([pix, pix.flip(1)])  # both orders
    meet = ~table.disjoint(pix)
    pix = pix[meet]
    rows = pix.shape[0]
    assert rows > 500
    a = torch.randint(0, 2, (rows,), generator=gen)
    col = torch.randint(0, 3, (rows, 2), generator=gen)
    xb = x[a].clone()
    for k in range(2):
        xb.view(rows, 2, -1)[torch.arange(rows), :, pix[:, k]] = palette[col[:, k]]
    got = table.chain_outputs(a, pix, col, palette[col])
    torch.testing.assert_close(got, clf(xb), rtol=1e-10, atol=1e-10)
    table.interaction = None  # the chain through both windows: the same outputs
    torch.testing.assert_close(table.chain_outputs(a, pix, col, palette[col]), got, rtol=1e-10, atol=1e-10)


def test_pair_recipe_ships_without_its_tables_and_builds_the_same() -> None:
    """A shard's recipe (what a cluster worker receives) pickles without the tables it built,
    and builds tables that give the same outputs as the driver's."""
    import pickle

    from l0tre.execution.pairs import PairRecipe

    torch.manual_seed(3)
    net = _wide_head_net().double().eval()
    clf = l0tre.Classifier(net)
    x = torch.rand(2, 1, 14, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    palette = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    recipe = PairRecipe(palette=palette, max_bytes=1 << 30, shape=(1, 14, 14))
    tables = recipe.tables(clf, x)
    assert tables and recipe.tables(clf, x) is tables  # built once
    blob = pickle.dumps(recipe)
    assert len(blob) < 4096  # the tables (hundreds of kB here) stay behind
    again = pickle.loads(blob)
    assert again.built is None
    other = again.tables(clf, x)
    pix = torch.tensor([[0, 100], [15, 16], [30, 195]])
    a, col = torch.tensor([0, 1, 1]), torch.tensor([[0, 1], [1, 1], [1, 0]])
    torch.testing.assert_close(other[0].outputs(a, pix, col), tables[0].outputs(a, pix, col))
    assert PairRecipe(palette=palette, max_bytes=1 << 30, shape=(1, 14, 14)).tables(clf, x[:0]) == []
