"""Candidate single-feature additions: which (feature, colour) pairs a search step tries.

Two sources, merged per row without duplicates: a first-order (gradient) estimate of the margin
change ``∇margin · (colour − value)`` over every free feature × palette colour, and the
screening ranking (:func:`~.screening.screen`, the ``pool``). Used by the greedy path
(:func:`~.paths.greedy`) and by the reduce and swap moves (:mod:`.moves`).
"""

from __future__ import annotations

import torch

from .searcher import BIG, INF, Searcher

__all__ = ["additions", "try_additions"]


def additions(
    s: Searcher, x: torch.Tensor, owner: torch.Tensor, m_grad: int, m_pool: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidate single-feature additions for each row of ``x``.

    Up to ``m_grad`` (feature, colour) pairs ranked by the first-order estimate
    ``∇margin · (colour − value)`` at ``x`` (when gradients are available) and up to ``m_pool``
    pairs from the screening ranking; features already changed in a row are excluded,
    duplicates removed.

    Args:
        x: ``(R, C, H, W)`` rows; owner: ``(R,)`` their input indices.

    Returns:
        ``row`` ``(E,)`` (index into ``x``), ``feat`` ``(E,)``, ``colour`` ``(E,)`` (palette
        index), ordered by row then feature then colour.
    """
    p = s.palette.shape[0]
    keys: list[torch.Tensor] = []
    oks: list[torch.Tensor] = []
    changed = s.space.changed(x, s.x0[owner])  # (R, n)
    if m_grad > 0 and s.differentiable and x.shape[0]:
        key, ok = _gradient_ranking(s, x, owner, changed, m_grad)
        keys.append(key)
        oks.append(ok)
    if m_pool > 0 and s.pool_feat.shape[1]:
        key, ok = _pool_entries(s, owner, changed, m_pool)
        keys.append(key)
        oks.append(ok)
    if not keys:
        e = torch.zeros(0, dtype=torch.int64, device=s.dev)
        return e, e.clone(), e.clone()
    key = torch.cat(keys, 1)
    ok = torch.cat(oks, 1)
    key = torch.where(ok, key, torch.full_like(key, BIG))
    key = torch.sort(key, dim=1).values
    dup = torch.zeros_like(ok)
    dup[:, 1:] = key[:, 1:] == key[:, :-1]
    keep = (key < BIG) & ~dup
    rows, cols = keep.nonzero(as_tuple=True)
    k = key[rows, cols]
    return rows, k // p, k % p


def _gradient_ranking(
    s: Searcher, x: torch.Tensor, owner: torch.Tensor, changed: torch.Tensor, m_grad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``m_grad`` pairs per row of ``x`` with the lowest first-order margin estimate.

    Returns:
        keys ``(R, m)`` (``feature × P + colour``) and whether each is a real candidate ``(R, m)``.
    """
    r_count = x.shape[0]
    p = s.palette.shape[0]
    n = s.space.n
    g = s.margin_grad(x, owner)
    parts_k, parts_o = [], []
    step = max(1, (1 << 22) // max(1, n * p * s.space.channels))
    for b0 in range(0, r_count, step):
        sl = slice(b0, b0 + step)
        gv = s.space.values(g[sl]).to(torch.float64)
        xv = s.space.values(x[sl]).to(torch.float64)
        pal = s.palette.to(torch.float64)
        est = torch.einsum("rnc,pc->rnp", gv, pal) - (gv * xv).sum(2, keepdim=True)
        same = (s.orig[owner[sl]].unsqueeze(2) == s.palette.view(1, 1, p, -1)).all(3)
        bad = same | changed[sl].unsqueeze(2)
        est = torch.where(bad, torch.full_like(est, INF), est)
        c = s.cfg.preset.colours_per_feature
        if c < p:
            # keep each feature's best few colours so that the ranking covers more features
            kth = torch.sort(est, dim=2).values[:, :, c - 1 : c]
            est = torch.where(est <= kth, est, torch.full_like(est, INF))
        est = est.reshape(est.shape[0], n * p)
        order = torch.argsort(est, dim=1, stable=True)[:, : min(m_grad, n * p)]
        parts_k.append(order)
        parts_o.append(est.gather(1, order) < INF)
    return torch.cat(parts_k), torch.cat(parts_o)


def _pool_entries(
    s: Searcher, owner: torch.Tensor, changed: torch.Tensor, m_pool: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``m_pool`` entries of the screening ranking whose features are unchanged.

    Returns:
        keys ``(R, K)`` (``feature × P + colour``) and which of them are taken ``(R, K)``.
    """
    p = s.palette.shape[0]
    pf, pc, po = s.pool_feat[owner], s.pool_col[owner], s.pool_ok[owner]
    free = po & ~changed.gather(1, pf)
    rank = torch.cumsum(free.to(torch.int64), dim=1)
    take = free & (rank <= m_pool)
    return pf * p + pc, take


def try_additions(
    s: Searcher, x: torch.Tensor, owner: torch.Tensor, m_grad: int, m_pool: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Evaluate the candidate additions of every row of ``x``.

    Returns:
        ``row``, ``feat``, ``colour`` ``(E,)`` as :func:`additions`, and ``score``, ``success``
        ``(E,)`` of each edited row.
    """
    row, feat, col = additions(s, x, owner, m_grad, m_pool)
    score, succ, _ = s.evaluate_edits(x, owner[row], feat.unsqueeze(1), s.palette[col].unsqueeze(1), index=row)
    return row, feat, col, score, succ
