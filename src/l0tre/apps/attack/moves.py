"""Refinement moves on adversarial examples (every accepted move keeps the example adversarial):

* :func:`reduce` — remove two changed features, add one new (L0 − 1);
* :func:`swap` — replace one changed feature by another when that lowers the margin;
* :func:`recolour` — give a changed feature another value (finer grid) when that lowers the
  margin;
* :func:`refine` — rounds of the three, each followed by the engine's tightening.
"""

from __future__ import annotations

import torch

from .additions import try_additions
from .searcher import INF, Searcher, pick

__all__ = ["recolour", "reduce", "refine", "swap"]


def _reverted(
    s: Searcher, x: torch.Tensor, rows: torch.Tensor, k_of: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of ``x`` (inputs ``rows``) with ``k_of`` changed features reverted (1 or 2).

    For ``k_of = 2`` only the ``reduce_pairs`` pairs whose members matter least (lowest sum of
    single-revert margins, evaluated here) are kept per input.

    Returns:
        ``src`` ``(R',)`` position in ``rows``, ``xr`` ``(R', C, H, W)``, the reverted features
        ``(R', k_of)``.
    """
    changed = s.space.changed(x, s.x0[rows])
    src1, f1 = changed.nonzero(as_tuple=True)
    single = torch.zeros(0, dtype=torch.float64, device=s.dev)
    if k_of == 2 and src1.numel():
        xr1 = x[src1].clone()
        s.space.scatter(xr1, f1.unsqueeze(1), s.orig[rows[src1], f1].unsqueeze(1))
        single, _ = s.margins_of(rows[src1], xr1)
    feats_list, src_list = [], []
    for i in range(rows.shape[0]):
        sel = src1 == i
        f = f1[sel]
        if k_of == 1:
            combos = f.unsqueeze(1)
        elif 2 <= f.numel() <= s.cfg.reduce_limit:
            combos = _least_pairs(s, f, single[sel])
        else:
            continue
        feats_list.append(combos)
        src_list.append(torch.full((combos.shape[0],), i, dtype=torch.int64, device=s.dev))
    if not feats_list:
        e = torch.zeros(0, dtype=torch.int64, device=s.dev)
        return e, x[:0], e.view(0, k_of)
    feats = torch.cat(feats_list)
    src = torch.cat(src_list)
    xr = x[src].clone()
    s.space.scatter(xr, feats, s.orig[rows[src].unsqueeze(1), feats])
    return src, xr, feats


def _least_pairs(s: Searcher, f: torch.Tensor, single: torch.Tensor) -> torch.Tensor:
    """The ``reduce_pairs`` pairs ``(K, 2)`` of changed features ``f`` ``(m,)`` with the lowest
    sum of single-revert margins ``single`` ``(m,)`` (ties: pair order)."""
    pos = torch.combinations(torch.arange(f.numel(), device=s.dev), 2)
    prio = single[pos[:, 0]] + single[pos[:, 1]]
    order = torch.argsort(prio, stable=True)[: s.cfg.reduce_pairs]
    return f[pos[order]]


def _edit_moves(
    s: Searcher, x: torch.Tensor, rows: torch.Tensor, k_of: int, bar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Revert ``k_of`` features and add one; keep per input the lowest-margin adversarial edit
    whose margin is below ``bar`` ``(B,)``.

    Returns:
        ``improved`` ``(B,)``, new ``x`` ``(B, C, H, W)`` and new ``score`` ``(B,)``.
    """
    b = rows.shape[0]
    src, xr, _ = _reverted(s, x, rows, k_of)
    improved = torch.zeros(b, dtype=torch.bool, device=s.dev)
    if src.numel() == 0:
        return improved, x, bar
    m = s.cfg.moves_per_row
    row, feat, col, score, succ = try_additions(s, xr, rows[src], m, m // 2)
    owner = src[row]
    win = pick(owner, score, succ & (score < bar[owner]), b)
    has = win >= 0
    if not bool(has.any()):
        return improved, x, bar
    w = win[has]
    x_new = x.clone()
    xi = xr[row[w]].clone()
    s.space.scatter(xi, feat[w].unsqueeze(1), s.palette[col[w]].unsqueeze(1))
    x_new[has] = xi
    new_bar = bar.clone()
    new_bar[has] = score[w]
    improved[has] = True
    return improved, x_new, new_bar


def reduce(s: Searcher, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove two changed features and add one (L0 − 1) where that stays adversarial.

    Returns:
        ``improved`` ``(B,)`` and the examples ``(B, C, H, W)``.
    """
    bar = torch.full((rows.shape[0],), INF, dtype=torch.float64, device=s.dev)
    improved, x_new, _ = _edit_moves(s, x, rows, 2, bar)
    return improved, x_new


def swap(
    s: Searcher, x: torch.Tensor, rows: torch.Tensor, score: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace one changed feature by a new one where the margin drops below ``score``.

    Returns:
        ``improved`` ``(B,)``, examples ``(B, C, H, W)``, scores ``(B,)``.
    """
    return _edit_moves(s, x, rows, 1, score)


def recolour(
    s: Searcher, x: torch.Tensor, rows: torch.Tensor, score: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Give one changed feature another value of the fine grid where that lowers the margin.

    Returns:
        ``improved`` ``(B,)``, examples ``(B, C, H, W)``, scores ``(B,)``.
    """
    b = rows.shape[0]
    q = s.fine.shape[0]
    changed = s.space.changed(x, s.x0[rows])
    src, feat = changed.nonzero(as_tuple=True)
    improved = torch.zeros(b, dtype=torch.bool, device=s.dev)
    if src.numel() == 0:
        return improved, x, score
    cur = s.space.values(x)[src, feat]  # (M, Cf)
    orig = s.orig[rows[src], feat]
    fine = s.fine.view(1, q, -1)
    ok = (fine != cur.unsqueeze(1)).any(2) & (fine != orig.unsqueeze(1)).any(2)  # (M, Q)
    mi, qi = ok.nonzero(as_tuple=True)
    es, esucc, _ = s.evaluate_edits(x, rows[src[mi]], feat[mi].unsqueeze(1), s.fine[qi].unsqueeze(1), index=src[mi])
    owner = src[mi]
    win = pick(owner, es, esucc & (es < score[owner]), b)
    has = win >= 0
    if not bool(has.any()):
        return improved, x, score
    w = win[has]
    x_new = x.clone()
    xi = x_new[has]
    s.space.scatter(xi, feat[mi[w]].unsqueeze(1), s.fine[qi[w]].unsqueeze(1))
    x_new[has] = xi
    new_score = score.clone()
    new_score[has] = es[w]
    improved[has] = True
    return improved, x_new, new_score


def refine(s: Searcher, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Refinement rounds on adversarial examples ``x`` ``(B, C, H, W)`` of inputs ``rows``.

    Every round tries :func:`reduce` (L0 − 1); where it fails and another round follows,
    :func:`swap` and :func:`recolour` lower the margin (which is what lets a later reduce or
    tighten succeed), then the engine's tightening runs again. Inputs stop when a round changes
    nothing. With a time budget (``anytime_rounds``) the rounds go on until then or the deadline.
    """
    if rows.numel() == 0:
        return x
    rounds = s.cfg.preset.rounds
    if rounds:
        rounds = max(rounds, s.cfg.anytime_rounds)
    score, _ = s.margins_of(rows, x)
    active = torch.ones(rows.shape[0], dtype=torch.bool, device=s.dev)
    for r in range(rounds):
        if not bool(active.any()) or s.deadline.passed():
            break
        a = active.nonzero().squeeze(1)
        xa, sa = x[a], score[a]
        red, xa = reduce(s, xa, rows[a])
        moved = red.clone()
        k = (~red).nonzero().squeeze(1)
        if k.numel() and r + 1 < rounds and not s.deadline.passed():
            sw, xk, sk = swap(s, xa[k], rows[a[k]], sa[k])
            rc, xk, sk = recolour(s, xk, rows[a[k]], sk)
            xa[k] = xk
            moved[k] = sw | rc
        m = moved.nonzero().squeeze(1)
        if m.numel():
            xa[m] = s.tighten(rows[a[m]], xa[m])
        sc, ok = s.margins_of(rows[a], xa)
        # a move is only kept when its result re-checks as adversarial (guards nondeterminism)
        x[a[ok]] = xa[ok]
        score[a[ok]] = sc[ok]
        active[a] = moved & ok
    return x
