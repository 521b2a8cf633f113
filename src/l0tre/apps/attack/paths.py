"""Candidate paths: adversarial examples built feature by feature from the screening.

* :func:`orderings` — the paper's upper-bound path: apply the single-feature solutions
  cumulatively in sensitivity order (by confidence, and by margin) with
  :func:`~l0tre.engine.upper.accumulate`.
* :func:`greedy` — adaptive forward selection: at every step evaluate candidate additions
  exactly (:func:`~.additions.try_additions`) and keep the one with the lowest margin.
* :func:`candidate_paths` — both for the inputs that the screening left open; the examples are
  tightened and the best one per input kept by :func:`~.shards.search_shard`.
"""

from __future__ import annotations

import torch

from ...engine.sensitivity import UnitResult
from ...engine.upper import accumulate
from .additions import try_additions
from .relax import relaxed
from .searcher import Searcher, pick
from .settings import Screen

__all__ = ["candidate_paths", "greedy", "orderings"]

_FAR = 1 << 40  # an L0 larger than any example's


def orderings(s: Searcher, unit: UnitResult, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The paper's cumulative path, ordered by confidence and by margin.

    Args:
        unit: the screening result; rows: ``(B,)`` inputs to run.

    Returns:
        ``owner`` ``(2B,)``, ``found`` ``(2B,)``, ``x`` ``(2B, C, H, W)`` (untightened).
    """
    b = rows.shape[0]
    rc = rows.cpu()
    feats_conf = unit.rank[rc].clamp_min(0)
    present_conf = unit.rank[rc] >= 0
    vals_conf = s.palette[unit.point[rc].clamp_min(0).to(s.dev)]
    feats = torch.cat([feats_conf.to(s.dev), s.pool_feat[rows]]).unsqueeze(2)
    vals = torch.cat([vals_conf, s.palette[s.pool_col[rows]]]).unsqueeze(2)
    present = torch.cat([present_conf.to(s.dev), s.pool_ok[rows]])
    owner = torch.cat([rows, rows])
    found, x, _ = accumulate(
        s.model, s.objective, s.space, s.x0[owner], s.ref[owner], feats, vals, present,
        batch_size=max(1, min(s.batch_size, 16 * 2 * b)),
    )
    return owner, found, x


def greedy(s: Searcher, rows: torch.Tensor, start: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive forward selection, started from a screened single feature.

    Args:
        rows: ``(B,)`` inputs (repeats allowed); start: ``(B,)`` rank in the screening ranking
            of the first feature (``-1``: start from the original); cap: most features to change.

    Returns:
        ``found`` ``(B,)`` and the examples ``(B, C, H, W)``.
    """
    b = rows.shape[0]
    x = s.x0[rows].clone()
    found = torch.zeros(b, dtype=torch.bool, device=s.dev)
    active = torch.ones(b, dtype=torch.bool, device=s.dev)
    if s.pool_feat.shape[1]:
        st = start.clamp(0, s.pool_feat.shape[1] - 1)
        first = (start >= 0) & s.pool_ok[rows, st]
        idx = first.nonzero().squeeze(1)
        xi = x[idx]
        f0 = s.pool_feat[rows[idx], st[idx]].unsqueeze(1)
        s.space.scatter(xi, f0, s.palette[s.pool_col[rows[idx], st[idx]]].unsqueeze(1))
        x[idx] = xi
        active &= first | (start < 0)
    preset = s.cfg.preset
    steps = 1
    while bool(active.any()) and steps < min(cap, s.cfg.max_steps) and not s.deadline.passed():
        a = active.nonzero().squeeze(1)
        row, feat, col, score, succ = try_additions(s, x[a], rows[a], preset.per_step, preset.pool)
        if row.numel() == 0:
            active[a] = False
            break
        win = pick(row, score, succ, a.shape[0])
        best = pick(row, score, torch.isfinite(score), a.shape[0])
        choice = torch.where(win >= 0, win, best)
        has = choice >= 0
        sel = choice[has]
        ai = a[has]
        xi = x[ai]
        s.space.scatter(xi, feat[sel].unsqueeze(1), s.palette[col[sel]].unsqueeze(1))
        x[ai] = xi
        done = win >= 0
        found[a[done]] = True
        active[a[done | ~has]] = False
        steps += 1
    return found, x


def candidate_paths(s: Searcher, unit: UnitResult, rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Untightened adversarial examples of the inputs ``rest`` ``(B,)``: greedy paths from the
    best ``starts`` screened features, with ``relax_steps`` the continuous relaxation's sparsest
    iterate (:mod:`.relax`) and, with ``orderings``, the paper's cumulative paths.

    Returns:
        ``owner`` ``(R,)`` (position in ``rest``) and the examples ``(R, C, H, W)``.
    """
    cfg = s.cfg
    local = torch.arange(rest.numel(), device=s.dev)
    starts = cfg.preset.starts
    rep = local.repeat(starts)
    start = torch.arange(starts, device=s.dev).repeat_interleave(rest.numel())
    fg, xg = greedy(s, rest[rep], start, cfg.max_steps)
    owners, xs = [rep[fg]], [xg[fg]]
    if cfg.preset.relax_steps and s.differentiable:
        fr, xr = relaxed(s, rest, cfg.preset.relax_steps)
        owners.append(local[fr])
        xs.append(xr[fr])
    if cfg.preset.orderings:
        _, f, xo = orderings(s, unit, rest)
        pos = torch.cat([local, local])
        # drop the margin ordering where it equals the confidence ordering
        same = (xo[: rest.numel()] == xo[rest.numel() :]).flatten(1).all(1)
        keep = f & torch.cat([torch.ones_like(same), ~same])
        if cfg.screen is not Screen.EXACT:
            # gradient mode: tighten an ordering only when it is not much longer than the greedy path
            lg_all = torch.where(fg, s.space.l0(xg, s.x0[rest[rep]]), torch.full_like(rep, _FAR))
            lg = torch.full_like(local, _FAR).scatter_reduce(0, rep, lg_all, "amin")
            keep &= s.space.l0(xo, s.x0[rest[pos]]) <= lg[pos] + cfg.ordering_slack
        owners.append(pos[keep])
        xs.append(xo[keep])
    return torch.cat(owners), torch.cat(xs)
