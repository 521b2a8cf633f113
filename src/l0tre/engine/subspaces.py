"""Enumerating t-subsets of ``n`` features by rank, in colexicographic order.

A subset ``c_1 < c_2 < … < c_t`` has rank ``Σ_i C(c_i, i)``; ranks ``0 … C(n, t) − 1`` cover
every subset exactly once, so a *range of ranks* is a self-contained unit of work.
"""

from __future__ import annotations

import math

import torch

__all__ = ["n_subsets", "unrank", "binomial_table", "count_points"]


def n_subsets(n: int, t: int) -> int:
    """``C(n, t)``."""
    return math.comb(n, t)


def binomial_table(n: int, t: int) -> torch.Tensor:
    """``table[i, c] = C(c, i)`` for ``i = 0..t``, ``c = 0..n`` (int64) → ``(t+1, n+1)``."""
    table = torch.zeros(t + 1, n + 1, dtype=torch.int64)
    for i in range(t + 1):
        for c in range(n + 1):
            table[i, c] = math.comb(c, i)
    return table


def unrank(ranks: torch.Tensor, n: int, t: int, table: torch.Tensor | None = None) -> torch.Tensor:
    """Subsets for colex ``ranks`` ``(S,)`` → LongTensor ``(S, t)`` of sorted feature indices."""
    if table is None:
        table = binomial_table(n, t)
    r = ranks.to(torch.int64).clone()
    out = torch.empty(r.shape[0], t, dtype=torch.int64)
    for i in range(t, 0, -1):
        row = table[i]  # C(c, i), nondecreasing in c
        # largest c with C(c, i) <= r
        c = torch.searchsorted(row, r, right=True) - 1
        out[:, i - 1] = c
        r = r - row[c]
    return out


def count_points(valid_counts: torch.Tensor, t: int) -> torch.Tensor:
    """Number of grid points over all t-subsets, per input.

    With ``v_f`` valid colours for feature ``f``, level ``t`` has ``e_t(v_1, …, v_n)`` points
    (the elementary symmetric polynomial), computed exactly in float64.

    Args:
        valid_counts: ``(N, n)`` counts.

    Returns:
        ``(N,)`` float64.
    """
    v = valid_counts.to(torch.float64)
    e = torch.zeros(v.shape[0], t + 1, dtype=torch.float64)
    e[:, 0] = 1.0
    for f in range(v.shape[1]):
        e[:, 1:] = e[:, 1:] + e[:, :-1] * v[:, f : f + 1]
    return e[:, t]
