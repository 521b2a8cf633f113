"""The sparse head (execution/sparse_head.py) equals the dense layers it replaces."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from l0tre.execution.sparse_head import SparseHead, split_head


def _after(ch: int, h: int, w: int, tail: bool) -> nn.Sequential:
    torch.manual_seed(3)
    bn = nn.BatchNorm2d(ch)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(-1.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    mods: list[nn.Module] = [bn, nn.ReLU(), nn.Flatten(), nn.Linear(ch * h * w, 7)]
    if tail:
        mods += [nn.ReLU(), nn.Linear(7, 4)]
    return nn.Sequential(nn.Sequential(*mods[:2]), *mods[2:]).double().eval()


def test_split_head_refuses_what_it_cannot_split() -> None:
    assert split_head(nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)).eval()) is not None
    assert split_head(nn.Sequential(nn.Conv2d(1, 1, 1), nn.Flatten(), nn.Linear(4, 2)).eval()) is None
    assert split_head(nn.Sequential(nn.ReLU(), nn.Flatten(start_dim=2), nn.Linear(4, 2)).eval()) is None
    assert split_head(nn.Sequential(nn.ReLU(), nn.Flatten()).eval()) is None
    assert split_head(nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)).train()) is None


def test_sparse_head_equals_the_dense_layers() -> None:
    """Random base maps, rows that change random (possibly repeated, possibly scratch) positions:
    the sparse head's outputs equal the dense layers on the whole changed map (float64)."""
    gen = torch.Generator().manual_seed(0)
    for tail in (False, True):
        n, ch, h, w = 3, 5, 6, 4
        after = _after(ch, h, w, tail)
        base = torch.zeros(n, h * w + 1, ch, dtype=torch.float64)
        base[:, :-1] = torch.randn(n, h * w, ch, generator=gen, dtype=torch.float64)
        head = SparseHead.build(after, base, (h, w))
        assert head is not None
        b, m = 200, 9
        a = torch.randint(0, n, (b,), generator=gen)
        lin = torch.randint(0, h * w + 1, (b, m), generator=gen)  # h·w: the scratch slot
        z = torch.randn(b, m, ch, generator=gen, dtype=torch.float64)
        # a repeated position carries the same value; count it once
        lin[:, 1] = lin[:, 0]
        z[:, 1] = z[:, 0]
        own = torch.ones(b, m, dtype=torch.bool)
        own[:, 1] = False
        for j in range(2, m):  # other repeats (random collisions): keep the first, copy its value
            for k in range(j):
                same = (lin[:, j] == lin[:, k]) & own[:, j]
                z[same, j] = z[same, k]
                own[same, j] = False
        maps = base[a].clone()
        rows = torch.arange(b).view(b, 1).expand(b, m)
        maps[rows, lin] = z
        dense = after(maps[:, :-1].view(b, h, w, ch).permute(0, 3, 1, 2))
        torch.testing.assert_close(head.outputs(a, lin, z, own), dense, rtol=1e-10, atol=1e-10)


def _head(gen: torch.Generator, n: int, ch: int, h: int, w: int) -> SparseHead:
    """A head (BN, ReLU, Flatten, Linear, ReLU, Linear) on random base maps ``(n, h·w + 1, ch)``."""
    base = torch.zeros(n, h * w + 1, ch, dtype=torch.float64)
    base[:, :-1] = torch.randn(n, h * w, ch, generator=gen, dtype=torch.float64)
    head = SparseHead.build(_after(ch, h, w, tail=True), base, (h, w))
    assert head is not None
    return head


def test_shared_positions_give_the_per_row_change() -> None:
    """Rows that change the same positions: the one-product path equals the per-row path."""
    gen = torch.Generator().manual_seed(1)
    ch, h, w = 3, 5, 5
    head = _head(gen, 4, ch, h, w)
    lin = torch.tensor([0, 1, 5, 6, h * w])  # a 2×2 window and one position outside the map
    a = torch.tensor([0, 0, 1, 2, 3, 3])
    z = torch.randn(a.shape[0], lin.shape[0], ch, generator=gen, dtype=torch.float64)
    per_row = head.change(a, lin.expand(a.shape[0], -1), z, torch.ones(a.shape[0], lin.shape[0], dtype=torch.bool))
    torch.testing.assert_close(head.change_shared(a, lin, z), per_row, rtol=1e-12, atol=1e-12)


def test_positional_product_gives_the_per_row_change() -> None:
    """Rows that share some positions and not others, entries masked out, positions outside
    the map: the position-by-position product equals the per-row path."""
    gen = torch.Generator().manual_seed(2)
    n, ch, h, w = 3, 4, 6, 5
    head = _head(gen, n, ch, h, w)
    b, m = 40, 6
    lin = torch.randint(0, h * w + 1, (b, m), generator=gen)  # h·w: the scratch slot
    lin[10:20] = lin[0]  # rows with the same positions
    a = torch.randint(0, n, (b,), generator=gen)
    z = torch.randn(b, m, ch, generator=gen, dtype=torch.float64)
    own = torch.rand(b, m, generator=gen) > 0.3
    for j in range(1, m):  # a repeated position within a row counts once
        own[:, j] &= ~(lin[:, :j] == lin[:, j : j + 1]).any(1)
    per_row = head.change(a, lin, z, own)
    torch.testing.assert_close(head.change_positional(a, lin, z, own), per_row, rtol=1e-12, atol=1e-12)


def test_a_head_too_large_to_copy_is_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    import l0tre.execution.sparse_head as sh

    after = _after(2, 3, 3, tail=False)
    base = torch.zeros(1, 10, 2, dtype=torch.float64)
    assert SparseHead.build(after, base, (3, 3)) is not None
    monkeypatch.setattr(sh, "HEAD_BYTES", 2 * 9 * 7 * 8 - 1)  # one byte below the layer's weights
    assert SparseHead.build(after, base, (3, 3)) is None
