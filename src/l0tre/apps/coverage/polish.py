"""Grid polish: tests for the open neurons that fire with real values but not after rounding.

A near-dead neuron may fire only barely over the input box (a largest pre-activation of
``1e-5``), and rounding the firing point to the ε-grid breaks it. For the few open neurons
closest to firing, after the reachability phase (:mod:`.reach`):

1. **Ascent with grid steps**: Adam on the box from the neuron's ``starts // 2`` closest seeds
   and as many random points, then straight-through steps on the grid
   (:func:`.groups.ascend` with ``grid_steps``); the best point *on the grid* is kept.
2. **Greedy coordinate ascent on the grid** (only when that point is within ``gap`` of
   firing): every (pixel, colour) change of the point is ranked by its first-order gain in the
   neuron's firing score, the ``q`` best are evaluated exactly, the best is applied if it raises
   the score; ``q`` grows ×4 (up to ``max_candidates``) when none does; the row stops when the
   neuron fires, when nothing helps at ``max_candidates``, or after ``steps`` steps.
3. The firing grid point becomes a sparse test from the neuron's closest seed as in
   :mod:`.reach` (bisection on the gain order, reverts) and is re-checked by a separate
   forward pass before it counts. Its L0 is an upper bound, never claimed minimal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from .candidates import Grid
from .groups import AscentSettings, ascend, group_scores, snap

__all__ = ["PolishSettings", "greedy_grid", "grid_point"]


@dataclass(frozen=True)
class PolishSettings:
    """``neurons`` open neurons polished (closest to firing first); ``starts`` ascent starts
    each; ``ascent`` its settings (with ``grid_steps``); ``gap``: the greedy step runs only
    when the grid point's firing score is ``≥ −gap``; ``candidates`` / ``max_candidates`` the
    changes evaluated per greedy step (start / largest); ``steps`` greedy steps; ``time_limit``
    seconds for the whole polish; ``rng_seed`` for the random starts."""

    neurons: int = 4
    starts: int = 16
    ascent: AscentSettings = AscentSettings(steps=300, lr=0.05, grid_steps=100)
    gap: float = 5e-5
    candidates: int = 256
    max_candidates: int = 4096
    steps: int = 60
    time_limit: float = 300.0
    rng_seed: int = 0


def grid_point(neurons: object, grid: Grid, col: int, seeds: Tensor, bounds: tuple[float, float],
               threshold: float, s: PolishSettings, deadline: float | None) -> tuple[Tensor, float]:
    """Step 1 for neuron ``col`` from ``seeds`` ``(S,)`` (its closest seeds): the best grid
    point ``(C, H, W)`` and its firing score."""
    lo, hi = bounds
    gen = torch.Generator().manual_seed(s.rng_seed + int(col))
    x = grid.x[seeds.to(grid.x.device)]
    rand = lo + (hi - lo) * torch.rand((max(0, s.starts - x.shape[0]), *x.shape[1:]), generator=gen)
    x0 = torch.cat([x, rand.to(device=x.device, dtype=x.dtype)])
    targets = torch.full((x0.shape[0], 1), int(col), dtype=torch.int64)
    values = torch.unique(grid.palette.flatten())
    z, _ = ascend(neurons, x0, targets, bounds, threshold, s.ascent, deadline, values)  # type: ignore[arg-type]
    z = snap(z, values)
    _, score, _ = group_scores(neurons, z, targets, threshold)  # type: ignore[arg-type]
    best = int(score[:, 0].argmax())
    return z[best], float(score[best, 0])


def greedy_grid(neurons: object, grid: Grid, col: int, z: Tensor, threshold: float, s: PolishSettings,
                deadline: float | None) -> tuple[Tensor, float]:
    """Step 2 for neuron ``col`` from the grid point ``z`` ``(C, H, W)``: the polished point and
    its firing score (greedy on the score; it stops as soon as the neuron's value is
    ``> threshold``)."""
    pal = grid.palette  # (P, C)
    p = pal.shape[0]
    target = torch.tensor([[int(col)]])
    val, sc, g = group_scores(neurons, z.unsqueeze(0), target, threshold, margin=float("inf"), grad=True)  # type: ignore[arg-type]
    cur = float(sc[0, 0])
    q = s.candidates
    for _ in range(s.steps):
        if float(val[0, 0]) > threshold or (deadline is not None and time.monotonic() > deadline):
            break
        v, gv = z.flatten(1).T, g[0].flatten(1).T  # (n, C)
        gain = ((pal.unsqueeze(0) - v.unsqueeze(1)) * gv.unsqueeze(1)).sum(2)  # (n, P)
        k = min(q, gain.numel())
        top = gain.flatten().topk(k).indices
        pix, c = top // p, top % p
        cand = z.unsqueeze(0).repeat(k, 1, 1, 1)
        cand.view(k, z.shape[0], -1)[torch.arange(k), :, pix] = pal[c]
        scores = torch.cat([group_scores(neurons, cand[i:i + 512], target.expand(min(512, k - i), 1),  # type: ignore[arg-type]
                                         threshold)[1][:, 0] for i in range(0, k, 512)])
        b = int(scores.argmax())
        if float(scores[b]) <= cur:
            if q >= s.max_candidates:
                break
            q = min(s.max_candidates, q * 4)
            continue
        z = cand[b]
        val, sc, g = group_scores(neurons, z.unsqueeze(0), target, threshold, margin=float("inf"), grad=True)  # type: ignore[arg-type]
        cur = float(sc[0, 0])
    return z, cur
