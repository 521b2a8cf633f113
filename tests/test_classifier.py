"""The Classifier adapter: batches padded to canonical sizes without changing any row's output;
forward passes in plain IEEE float32 (no TF32)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import l0tre
from l0tre.arith import _precision_switches, ieee_float32
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
    # the same rows unpadded: equal up to the BLAS's rounding, which may depend on the row count
    unpadded = clf(x)
    assert net.seen[-1] == n
    torch.testing.assert_close(out, unpadded, rtol=0, atol=1e-12)
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


# -- plain IEEE float32 (no TF32) wherever decisions are made ---------------------------------

def _switches() -> tuple[object, ...]:
    return _precision_switches()


def _state() -> tuple[object, ...]:
    sw = _switches()
    if sw:
        return tuple(s.fp32_precision for s in sw)  # type: ignore[attr-defined]
    return (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)


def _is_ieee() -> bool:
    sw = _switches()
    if sw:
        return all(s.fp32_precision == "ieee" for s in sw)  # type: ignore[attr-defined]
    return not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


class _PrecisionRecorder(nn.Module):
    """A tiny conv net that records, at every forward pass, whether float32 is plain IEEE."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 3))
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(_is_ieee())
        return self.net(x)


@contextlib.contextmanager
def _tf32_requested() -> Iterator[None]:
    """The user asks for TF32 everywhere inside the block; their previous settings come back."""
    sw = _switches()
    before = _state()
    if sw:
        for s in sw:
            s.fp32_precision = "tf32"  # type: ignore[attr-defined]
    else:
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        if sw:
            for s, v in zip(sw, before, strict=True):
                s.fp32_precision = v  # type: ignore[attr-defined]
        else:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before  # type: ignore[misc]


def test_ieee_float32_sets_and_restores_the_backend_settings() -> None:
    before = _state()
    with _tf32_requested():
        asked = _state()
        assert not _is_ieee()
        with ieee_float32():
            assert _is_ieee()
        assert _state() == asked
        with pytest.raises(RuntimeError), ieee_float32():
            raise RuntimeError("boom")
        assert _state() == asked
    assert _state() == before


def test_forward_passes_of_the_engine_and_the_attack_run_in_ieee_float32() -> None:
    with _tf32_requested():
        rec = _PrecisionRecorder().eval()
        x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
        l0tre.evaluate(rec, x, t_max=1, mode="eager")
        l0tre.attack(rec, x, effort="fast", precision="float32")
        assert rec.seen and all(rec.seen)
        rec.seen.clear()
        rec(x)  # the module called directly: the user's settings
        assert rec.seen == [False]


def test_channels_last_mode_leaves_the_callers_module_as_it_was() -> None:
    """The NHWC weights live in a copy: the caller's convolution weights keep their layout (a
    model handed to l0tre is not changed under its owner), and the outputs are the same."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 5))
    strides = net[0].weight.stride()
    clf = l0tre.Classifier(net)
    x = torch.rand(3, 3, 8, 8)
    before = clf(x)
    clf.set_mode(channels_last=True)
    assert clf.mode == "channels_last"
    assert net[0].weight.stride() == strides and net[0].weight.is_contiguous()
    torch.testing.assert_close(clf(x), before, rtol=1e-5, atol=1e-6)
    clf.set_mode()
    assert clf.mode == "eager" and net[0].weight.stride() == strides
    torch.testing.assert_close(clf(x), before, rtol=0, atol=0)


def test_layer_sizes_are_measured_in_channels_last_mode_too() -> None:
    """The memory probe hooks the caller's module; in channels_last mode the classifier runs a
    copy, so the probe must run the module itself (else it measures nothing)."""
    from l0tre.execution.memory import layer_output_bytes

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 3))
    clf = l0tre.Classifier(net)
    eager = layer_output_bytes(clf, (1, 6, 6))
    clf.set_mode(channels_last=True)
    assert eager == layer_output_bytes(clf, (1, 6, 6)) == [2 * 16 * 4, 2 * 16 * 4, 3 * 4]


def test_bucket_floor_is_the_largest_bucket_within_n() -> None:
    """A memory cap of ``n`` rows becomes calls of ``bucket_floor(n)`` rows, which padding
    (:func:`bucket_rows`) leaves as they are: never padded beyond the cap."""
    from l0tre.classifier import bucket_floor, bucket_rows

    for n in range(1, 400):
        f = bucket_floor(n)
        assert f <= n and bucket_rows(f) == f
        assert all(bucket_rows(m) != m for m in range(f + 1, n + 1))  # no bucket size between f and n
    assert [bucket_floor(n) for n in (1, 3, 17, 33, 100)] == [1, 2, 16, 32, 96]


def test_memory_capped_calls_are_never_padded_beyond_the_cap() -> None:
    from l0tre.classifier import bucket_rows
    from l0tre.execution.memory import memory_rows

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 30 * 30, 2))
    clf = l0tre.Classifier(net, input_shape=(3, 32, 32))
    for budget in (1 << 20, 3 << 20, 10 << 20, 100 << 20):
        rows = memory_rows(clf, (3, 32, 32), budget)
        assert bucket_rows(rows) == rows
