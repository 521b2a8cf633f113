"""The Classifier adapter pads batches to canonical sizes without changing any row's output."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import l0tre
from l0tre.classifier import bucket_rows


@given(st.integers(min_value=1, max_value=5000))
def test_bucket_rows_bounds(n: int) -> None:
    b = bucket_rows(n)
    assert b >= n
    if n <= 32:
        assert b & (b - 1) == 0 and b < 2 * n  # the next power of two
    else:
        assert b % 32 == 0 and b - n < 32


def test_bucket_rows_few_shapes() -> None:
    assert len({bucket_rows(n) for n in range(1, 1025)}) == 6 + 31  # 1, 2, 4, 8, 16, 32, then 64 … 1024


class _Recorder(torch.nn.Module):
    """A per-row model that records the batch sizes it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(12, 4)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape[0])
        return self.lin(x.flatten(1))


@settings(deadline=None, max_examples=25)
@given(st.integers(min_value=1, max_value=200))
def test_padded_batches_give_the_same_rows(n: int) -> None:
    torch.manual_seed(0)
    net = _Recorder().double()
    x = torch.rand(n, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    clf = l0tre.Classifier(net)
    out = clf(x)
    assert out.shape == (n, 4)
    assert net.seen == [bucket_rows(n)]
    clf.bucket = False
    assert torch.equal(out, clf(x)) and net.seen[-1] == n
    # every row alone gives the same output (no leakage from the padding rows)
    alone = torch.cat([l0tre.Classifier(net)(x[i : i + 1]) for i in range(n)])
    torch.testing.assert_close(out, alone, rtol=0, atol=1e-12)


def test_plain_callables_are_not_padded() -> None:
    seen: list[int] = []

    def f(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return x.flatten(1)[:, :3]

    out = l0tre.Classifier(f)(torch.rand(5, 1, 2, 2))
    assert out.shape == (5, 3) and seen == [5]
