"""The comparison's statistics against SciPy and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l0tre.apps.compare.stats import holm, paired_t, t_cdf, t_quantile

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("df", [1, 2, 3, 7, 30, 99, 999])
@pytest.mark.parametrize("p", [0.0005, 0.025, 0.3, 0.5, 0.9, 0.975, 0.9995])
def test_t_quantile_matches_scipy(df: int, p: float) -> None:
    want = float(scipy_stats.t.ppf(p, df))
    assert t_quantile(p, df) == pytest.approx(want, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("df", [1, 4, 50])
@pytest.mark.parametrize("t", [-40.0, -2.0, -1e-9, 0.0, 0.7, 3.5])
def test_t_cdf_matches_scipy(df: int, t: float) -> None:
    assert t_cdf(t, df) == pytest.approx(float(scipy_stats.t.cdf(t, df)), rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("t", [-1e6, -3.0, -1e-9, 0.0, 1e-12, 0.5, 25.0])
def test_t_cdf_closed_forms(t: float) -> None:
    """df = 1 is the Cauchy law, df = 2 has the CDF 1/2 + t / (2 sqrt(2 + t²))."""
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, rel=1e-12, abs=1e-15)
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("seed", range(5))
def test_paired_t_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 200))
    a = rng.integers(0, 12, size=n) / 2.0  # per-input estimates are halves of integers
    b = np.clip(a + rng.integers(-3, 4, size=n) / 2.0, 0, None)
    got = paired_t("a", "b", a, b, 0.9)
    ref = scipy_stats.ttest_rel(a, b)
    ci = ref.confidence_interval(confidence_level=0.9)
    assert got.n == n and got.mean == pytest.approx(float(np.mean(a - b)))
    assert got.p == pytest.approx(float(ref.pvalue), rel=1e-8)
    assert got.ci_low == pytest.approx(float(ci.low), rel=1e-8)
    assert got.ci_high == pytest.approx(float(ci.high), rel=1e-8)


def test_paired_t_degenerate_cases() -> None:
    same = paired_t("a", "b", np.array([2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0]))
    assert (same.ci_low, same.ci_high, same.p) == (1.0, 1.0, 0.0)  # every difference is exactly 1
    equal = paired_t("a", "b", np.ones(4), np.ones(4))
    assert equal.p == 1.0 and equal.mean == 0.0
    one = paired_t("a", "b", np.array([3.0]), np.array([1.0]))
    assert one.mean == 2.0 and math.isnan(one.p) and not one.significant()
    with pytest.raises(ValueError, match="a, b"):
        paired_t("a", "b", np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="confidence"):
        paired_t("a", "b", np.ones(3), np.ones(3), confidence=1.0)


def test_holm_by_hand() -> None:
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, max(0.06, 0.04·1) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.02, 0.3]) == pytest.approx([0.04, 0.3])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 2·0.5 = 1 carries over (monotone)
    out = holm([float("nan"), 0.01])
    assert math.isnan(out[0]) and out[1] == pytest.approx(0.01)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12))
def test_holm_properties(ps: list[float]) -> None:
    adj = holm(ps)
    m = len(ps)
    for p, q in zip(ps, adj, strict=True):
        assert p - 1e-12 <= q <= 1.0 and q <= min(1.0, m * p) + 1e-12
    order = sorted(range(m), key=lambda i: ps[i])
    assert all(adj[i] <= adj[j] + 1e-12 for i, j in zip(order, order[1:], strict=False))
