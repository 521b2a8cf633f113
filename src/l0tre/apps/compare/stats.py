"""Paired statistics of a model comparison: paired t confidence intervals, p-values and the
Holm–Bonferroni correction for all pairs (every model is evaluated on the same inputs).

The Student t distribution is computed here (regularised incomplete beta function by its
continued fraction), so that no SciPy is needed; the tests check it against SciPy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PairedTest", "holm", "paired_t", "t_cdf", "t_quantile"]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float, y: float) -> float:
    """Regularised incomplete beta function ``I_x(a, b)``, with ``y = 1 − x`` given exactly."""
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, y) / b


def t_cdf(t: float, df: float) -> float:
    """``P(T ≤ t)`` for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t), t * t / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p: expected a probability in (0, 1), got {p}")
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > p:
        lo *= 2.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, abs(mid)):
            break
    return (lo + hi) / 2.0


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of ``a`` against ``b`` on the same inputs.

    Attributes:
        a, b: the two names; n: the number of pairs.
        mean: mean of the per-input differences ``a − b``; sd: their standard deviation.
        ci_low, ci_high: the two-sided confidence interval of the mean difference (paired t).
        p: two-sided p-value of "mean difference = 0"; p_holm: Holm-adjusted over the family.
        confidence: the interval's level (e.g. 0.95).
    """

    a: str
    b: str
    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    p: float
    confidence: float
    p_holm: float = float("nan")

    def significant(self, alpha: float | None = None) -> bool:
        """Whether the Holm-adjusted p-value is below ``alpha`` (default ``1 − confidence``)."""
        level = 1.0 - self.confidence if alpha is None else alpha
        return bool(math.isfinite(self.p_holm) and self.p_holm < level)

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "n": self.n, "mean_difference": self.mean, "sd": self.sd,
                "ci": [self.ci_low, self.ci_high], "confidence": self.confidence, "p": self.p,
                "p_holm": self.p_holm, "significant": self.significant()}


def paired_t(a_name: str, b_name: str, a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> PairedTest:
    """Paired t test and confidence interval of ``mean(a − b)``.

    Args:
        a, b: ``(n,)`` per-input values of the two models on the same inputs.
        confidence: level of the two-sided interval, in (0, 1).

    Raises:
        ValueError: ``a`` and ``b`` differ in shape or are empty, or a bad ``confidence``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a level in (0, 1), got {confidence}")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"a, b: expected two non-empty 1-D arrays of one shape, got {a.shape} and {b.shape}")
    d = a - b
    n, mean = int(d.size), float(d.mean())
    if n < 2:
        return PairedTest(a_name, b_name, n, mean, float("nan"), float("nan"), float("nan"), float("nan"), confidence)
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    if se == 0.0:  # every difference equal: the mean is exact
        return PairedTest(a_name, b_name, n, mean, sd, mean, mean, 1.0 if mean == 0.0 else 0.0, confidence)
    q = t_quantile(0.5 + confidence / 2.0, n - 1)
    p = 2.0 * t_cdf(-abs(mean / se), n - 1)
    return PairedTest(a_name, b_name, n, mean, sd, mean - q * se, mean + q * se, min(1.0, p), confidence)


def holm(p_values: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given; NaN stays NaN)."""
    idx = [i for i, p in enumerate(p_values) if math.isfinite(p)]
    order = sorted(idx, key=lambda i: p_values[i])
    m = len(order)
    out = [float("nan")] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out
