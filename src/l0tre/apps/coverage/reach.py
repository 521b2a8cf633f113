"""The reachability phase: tests for the neurons the grid levels did not cover.

First the batched group phase (:func:`group_phase`, :mod:`.groups`): all open neurons in
groups, one row per group, Adam ascent of the group's clipped firing scores from its closest
seed, then a sparse test per fired target as in step 2 below; up to ``rounds`` passes. Then,
for each neuron still open (at most ``max_neurons``, closest to firing first):

1. **Ascent** (is it reachable at all?): projected sign-gradient ascent of the neuron's
   *firing score* over the whole input box — the largest pre-activation element of a conv
   channel (a channel fires as soon as one element does), the pre-activation of an element or
   dense unit — from the neuron's closest seed and ``starts - 1`` random points, ``steps`` steps
   of ``step_size·(hi − lo)``. The point of highest score is kept and rounded pixel by pixel to
   the nearest ε-grid colour.
2. **Sparsification** (the paper's Alg. 2/3 idea): the pixels where the rounded point differs
   from the seed are ordered by their first-order gain at the seed (gradient × change, largest
   first); the shortest firing prefix is found by bisection, then its pixels are reverted one by
   one, smallest gain first, as long as the neuron still fires.

All neurons are processed together (one forward/backward per step for all rows). A test is kept
only after a separate forward pass of the final image re-checks it; one test may cover several
open neurons (the one of smallest L0 is kept per neuron). The L0 of these tests is *not* claimed
minimal: it is an upper bound found by a heuristic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .candidates import Candidates, Grid
from .groups import GroupSettings, ascend, group_scores, lattice_groups
from .neurons import NeuronKind, Neurons
from .polish import PolishSettings, greedy_grid, grid_point
from .search import LevelRecord, Search, _Stop

__all__ = [
    "ReachSettings", "firing_scores", "group_phase", "group_seeds", "group_starts", "polish_phase", "reach_phase",
]


@dataclass(frozen=True)
class ReachSettings:
    """``starts`` ascent starts per neuron (the closest seed and ``starts - 1`` random points);
    ``steps`` ascent steps of ``step_size`` (fraction of the input range); ``max_neurons`` open
    neurons handled (closest to firing first); ``max_reverts`` revert steps; ``rng_seed`` for
    the random starts; ``groups`` the batched group phase run first (``None``: not run);
    ``polish`` the grid polish run last (:mod:`.polish`; ``None``: not run)."""

    starts: int = 4
    steps: int = 40
    step_size: float = 0.05
    max_neurons: int = 256
    max_reverts: int = 512
    rng_seed: int = 0
    groups: GroupSettings | None = GroupSettings()
    polish: PolishSettings | None = PolishSettings()


def firing_scores(neurons: Neurons, x: Tensor, cols: Tensor, *, grad: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Row ``r``'s neuron ``cols[r]`` on input ``x[r]`` ``(R, C, H, W)``: its value ``(R,)``,
    its firing score ``(R,)`` (largest pre-activation element of a channel, else the
    pre-activation) and, with ``grad``, ``∂ score_r / ∂ x_r`` ``(R, C, H, W)`` (else empty)."""
    z = x.detach().clone().requires_grad_(grad)
    starts = torch.tensor([layer.offset for layer in neurons.layers])
    which = torch.searchsorted(starts, cols.cpu(), right=True) - 1
    value = torch.zeros(len(cols), dtype=x.dtype, device=x.device)
    score = torch.zeros(len(cols), dtype=x.dtype, device=x.device)
    with torch.set_grad_enabled(grad):
        acts = neurons.graph.activations(z, {layer.pre for layer in neurons.layers})
        total = z.new_zeros(())
        for li, layer in enumerate(neurons.layers):
            rows = (which == li).nonzero().squeeze(1).to(x.device)
            if rows.numel() == 0:
                continue
            a = acts[layer.pre]
            local = (cols.to(x.device)[rows] - layer.offset)
            if neurons.kind is NeuronKind.CHANNEL and a.dim() == 4:
                sel = a[rows, local].flatten(1)  # (r, H·W)
                s, v = sel.amax(dim=1), sel.clamp(min=0).mean(dim=1)
            else:
                s = a.flatten(1)[rows, local]
                v = s.clamp(min=0)
            score[rows], value[rows] = s.detach(), v.detach()
            total = total + s.sum()
        g = torch.autograd.grad(total, z, allow_unused=True)[0] if grad else None
    return value, score, (torch.zeros_like(x) if g is None and grad else g if g is not None else x.new_zeros(0))


def _ascend(neurons: Neurons, x0: Tensor, cols: Tensor, bounds: tuple[float, float], s: ReachSettings,
            deadline: float | None) -> tuple[Tensor, Tensor]:
    """Sign-gradient ascent of the firing score from ``x0`` ``(R, C, H, W)``; the best point per
    row and its score ``(R,)``."""
    lo, hi = bounds
    z = x0.clone()
    best, best_score = z.clone(), torch.full((len(cols),), float("-inf"), dtype=z.dtype, device=z.device)
    for _ in range(s.steps + 1):
        _, score, g = firing_scores(neurons, z, cols, grad=True)
        better = score > best_score
        best[better], best_score[better] = z[better], score[better]
        z = (z + s.step_size * (hi - lo) * g.sign()).clamp(lo, hi)
        if deadline is not None and time.monotonic() > deadline:
            break
    return best, best_score


def _round(grid: Grid, z: Tensor) -> Tensor:
    """Nearest palette colour of each pixel of ``z`` ``(R, C, H, W)`` → ``(R, H·W)`` indices."""
    v = grid.space.values(z)  # (R, n, C)
    d = ((v.unsqueeze(2) - grid.palette.view(1, 1, *grid.palette.shape)) ** 2).sum(3)
    return d.argmin(dim=2)


def _images(grid: Grid, seeds: Tensor, mask: Tensor, col: Tensor) -> Tensor:
    """Seeds with the pixels in ``mask`` ``(R, n)`` set to colours ``col`` ``(R, n)``."""
    base = grid.x[seeds]
    target = grid.space.images(grid.palette[col])  # (R, C, H, W)
    h, w = base.shape[2], base.shape[3]
    return torch.where(mask.view(-1, 1, h, w), target, base)


def _fires(neurons: Neurons, grid: Grid, seeds: Tensor, mask: Tensor, col: Tensor, cols: Tensor,
           threshold: float) -> Tensor:
    return firing_scores(neurons, _images(grid, seeds, mask, col), cols)[0] > threshold


def _sparsify(search: Search, seeds: Tensor, col: Tensor, cols: Tensor, s: ReachSettings) -> Tensor:
    """The changed-pixel masks ``(R, n)`` of the sparse tests (all-False where none fires)."""
    grid, neurons, thr = search.grid, search.neurons, search.settings.threshold
    dev = grid.x.device
    diff = grid.valid[seeds].gather(2, col.unsqueeze(2)).squeeze(2)  # (R, n): a real change
    _, _, g = firing_scores(neurons, grid.x[seeds], cols, grad=True)
    pal = grid.palette[col]  # (R, n, C)
    gain = (grid.space.values(g) * (pal - grid.space.values(grid.x[seeds]))).sum(2)
    order = gain.masked_fill(~diff, float("-inf")).argsort(dim=1, descending=True)  # (R, n)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=dev).expand_as(order).contiguous())
    n_diff = diff.sum(1)
    ok = _fires(neurons, grid, seeds, diff, col, cols, thr)
    lo, hi = torch.zeros_like(n_diff), n_diff.clone()  # lo: not firing, hi: firing (where ok)
    while bool(((hi - lo > 1) & ok).any()):
        mid = (lo + hi) // 2
        fire = _fires(neurons, grid, seeds, diff & (rank < mid.unsqueeze(1)), col, cols, thr)
        hi = torch.where(fire & ok, mid, hi)
        lo = torch.where(~fire & ok, mid, lo)
    mask = diff & (rank < hi.unsqueeze(1)) & ok.unsqueeze(1)
    for i in range(min(int(hi.max()) if len(hi) else 0, s.max_reverts)):
        step = hi - 1 - i  # revert the smallest gain of the prefix first
        active = ok & (step >= 0)
        if not bool(active.any()):
            break
        pix = order.gather(1, step.clamp(min=0).unsqueeze(1)).squeeze(1)
        trial = mask.clone()
        idx = torch.arange(len(pix), device=dev)
        trial[idx, pix] = trial[idx, pix] & ~active
        fire = _fires(neurons, grid, seeds, trial, col, cols, thr)
        mask = torch.where((fire & active).unsqueeze(1), trial, mask)
        if search.settings.deadline is not None and time.monotonic() > search.settings.deadline:
            break
    return mask


def reach_phase(search: Search, settings: ReachSettings, bounds: tuple[float, float]) -> LevelRecord | None:
    """Run the phase on ``search``'s open neurons; commits the re-checked tests and returns its
    record (``t`` = the largest L0 kept, ``0`` if none), or ``None`` if nothing is open. Raises
    ``_Stop`` after committing when the deadline passes."""
    if settings.groups is not None:  # the batched phase first: cheap per neuron, many at once
        group_phase(search, settings.groups, bounds)
    cols = search.open()
    if cols.numel() == 0:
        return None
    start = time.monotonic()
    order, closest = search.seed_order(cols)
    del order
    _, score0 = search.neurons.values(search.grid.x[closest.to(search.grid.x.device)], cols)
    pick = score0.diagonal().argsort(descending=True)[:settings.max_neurons].cpu()
    cols, closest = cols[pick], closest[pick]
    dev = search.grid.x.device
    gen = torch.Generator().manual_seed(settings.rng_seed)
    lo, hi = bounds
    rows = max(1, search.settings.batch_size // max(1, settings.starts))
    tests: list[tuple[int, Tensor, Tensor]] = []
    stop = False
    for r0 in range(0, cols.numel(), rows):
        c, sd = cols[r0:r0 + rows], closest[r0:r0 + rows].to(dev)
        x0 = [search.grid.x[sd]] + [lo + (hi - lo) * torch.rand(search.grid.x[sd].shape, generator=gen).to(
            device=dev, dtype=search.grid.x.dtype) for _ in range(settings.starts - 1)]
        z, sc = _ascend(search.neurons, torch.cat(x0), c.repeat(settings.starts), bounds, settings,
                        search.settings.deadline)
        best = sc.view(settings.starts, -1).argmax(dim=0)
        z = z.view(settings.starts, len(c), *z.shape[1:])[best, torch.arange(len(c), device=dev)]
        col = _round(search.grid, z)
        mask = _sparsify(search, sd, col, c, settings)
        for r in range(len(c)):
            if bool(mask[r].any()):
                tests.append((int(sd[r]), mask[r].nonzero().squeeze(1).cpu(), col[r][mask[r]].cpu()))
        if search.settings.deadline is not None and time.monotonic() > search.settings.deadline:
            stop = True
            break
    found, longest = _commit(search, tests)
    record = LevelRecord(longest, "reach" if not stop else "reach (stopped)", len(tests), found,
                         time.monotonic() - start)
    search.levels.append(record)
    if stop:
        raise _Stop
    if settings.polish is not None:
        polish_phase(search, settings.polish, bounds)
    return record


def polish_phase(search: Search, s: PolishSettings, bounds: tuple[float, float]) -> LevelRecord | None:
    """The grid polish (:mod:`.polish`) of the ``s.neurons`` open neurons closest to firing;
    commits the re-checked tests (level mode ``polish``) and returns the record, or ``None`` if
    nothing is open. Raises ``_Stop`` after committing when the deadline passes."""
    cols = search.open()
    if cols.numel() == 0 or s.neurons <= 0:
        return None
    start = time.monotonic()
    limit = start + s.time_limit
    deadline = limit if search.settings.deadline is None else min(limit, search.settings.deadline)
    n = search.grid.x.shape[0]
    scores = torch.cat([search.neurons.values(search.grid.x[i:i + search.settings.batch_size], cols)[1].float().cpu()
                        for i in range(0, n, search.settings.batch_size)])  # (N, U)
    pick = scores.max(dim=0).values.argsort(descending=True)[:s.neurons]
    tests: list[tuple[int, Tensor, Tensor]] = []
    thr = search.settings.threshold
    for u in pick.tolist():
        if time.monotonic() > deadline or bool(search.covered[cols[u]]):
            break
        near = scores[:, u].argsort(descending=True)[:max(1, s.starts // 2)]
        z, score = grid_point(search.neurons, search.grid, int(cols[u]), near, bounds, thr, s, deadline)
        if score < -s.gap:
            continue
        z, score = greedy_grid(search.neurons, search.grid, int(cols[u]), z, thr, s, deadline)
        sd = near[:1].to(search.grid.x.device)
        col = _round(search.grid, z.unsqueeze(0))
        mask = _sparsify(search, sd, col, cols[u:u + 1].to(sd.device), ReachSettings(groups=None, polish=None))
        if bool(mask[0].any()):
            tests.append((int(sd[0]), mask[0].nonzero().squeeze(1).cpu(), col[0][mask[0]].cpu()))
    found, longest = _commit(search, tests)
    record = LevelRecord(longest, "polish", len(tests), found, time.monotonic() - start)
    search.levels.append(record)
    if search.settings.deadline is not None and time.monotonic() > search.settings.deadline:
        raise _Stop
    return record


def _commit(search: Search, tests: list[tuple[int, Tensor, Tensor]]) -> tuple[int, int]:
    """Re-check ``tests`` by a separate forward pass of each test image; every open neuron one of
    them fires takes the firing test of smallest L0. → (neurons covered, largest L0 kept)."""
    cols = search.open()
    if not tests or cols.numel() == 0:
        return 0, 0
    tests = sorted(tests, key=lambda t: int(t[1].numel()))
    imgs = torch.cat([search.grid.images(Candidates(torch.tensor([sd]), pos.view(1, -1), col.view(1, -1)))
                      for sd, pos, col in tests])
    fired = torch.cat([search.neurons.values(imgs[i:i + search.settings.batch_size], cols)[0].float().cpu()
                       for i in range(0, len(tests), search.settings.batch_size)]) > search.settings.threshold
    hit = fired.any(dim=0)
    first = fired.float().argmax(dim=0)  # the first firing test = the smallest L0 (sorted)
    used = torch.unique(first[hit])
    remap = torch.full((len(tests),), -1, dtype=torch.int64)
    remap[used] = torch.arange(used.numel()) + len(search.tests)
    for r in used.tolist():
        sd, pos, col = tests[r]
        search.tests.append((sd, tuple(pos.tolist()), tuple(col.tolist())))
    search.covered[cols[hit]] = True
    search.test_of[cols[hit]] = remap[first[hit]]
    return int(hit.sum()), max((int(tests[r][1].numel()) for r in used.tolist()), default=0)


def group_seeds(search: Search, cols: Tensor, groups: Tensor, rank: int, margin: float) -> Tensor:
    """For each group ``(G, k)`` of open neurons ``cols`` (sorted), its ``rank``-th closest seed
    ``(G,)`` by the sum of its targets' clipped closeness scores."""
    return group_starts(search, cols, groups, rank, margin, tests=False)[0]


def group_starts(search: Search, cols: Tensor, groups: Tensor, rank: int, margin: float, *,
                 tests: bool = True) -> tuple[Tensor, Tensor]:
    """For each group ``(G, k)`` of open neurons ``cols`` (sorted), its ``rank``-th closest
    starting point among the seeds and (with ``tests``) the tests kept so far, by the sum of
    its targets' clipped closeness scores: the seed it belongs to ``(G,)`` and the start image
    ``(G, C, H, W)`` (a test is a valid start for its seed: its changes count in the L0 of
    what is derived from it, which is measured from the seed)."""
    grid = search.grid
    bs = search.settings.batch_size
    pool_seed = torch.arange(grid.x.shape[0])
    if tests and search.tests:
        pool_seed = torch.cat([pool_seed, torch.tensor([sd for sd, _, _ in search.tests], dtype=torch.int64)])
    where = torch.searchsorted(cols, groups.clamp(min=0))
    used = groups.unsqueeze(0) >= 0
    totals = []
    for i in range(0, pool_seed.numel(), bs):
        imgs = _pool_images(search, i, min(pool_seed.numel(), i + bs))
        sc = search.neurons.values(imgs, cols)[1].float().cpu().clamp(max=margin)  # (b, U)
        totals.append(torch.where(used, sc[:, where], 0).sum(dim=2))  # (b, G)
    total = torch.cat(totals)
    pick = total.argsort(dim=0, descending=True, stable=True)[rank % total.shape[0]]  # (G,)
    starts = torch.cat([_pool_images(search, int(p), int(p) + 1) for p in pick]) if pick.numel() else grid.x[:0]
    return pool_seed[pick], starts


def _pool_images(search: Search, a: int, b: int) -> Tensor:
    """Images ``a … b-1`` of the pool seeds + tests ``(b − a, C, H, W)``."""
    n = search.grid.x.shape[0]
    parts = [search.grid.x[a:min(b, n)]]
    for k in range(max(a, n), b):
        sd, pos, col = search.tests[k - n]
        parts.append(search.grid.images(Candidates(torch.tensor([sd]), torch.tensor([pos], dtype=torch.int64),
                                                   torch.tensor([col], dtype=torch.int64))))
    return torch.cat(parts)


def _tests_of_batch(search: Search, groups: Tensor, seeds: Tensor, starts: Tensor, bounds: tuple[float, float],
                    s: GroupSettings) -> list[tuple[int, Tensor, Tensor]]:
    """Ascent for one batch of groups from ``starts`` ``(G, C, H, W)`` (a seed, or a test of
    seed ``seeds[g]``), then one sparse test (from the seed) per target the rounded point fires."""
    grid, neurons, thr = search.grid, search.neurons, search.settings.threshold
    dev = grid.x.device
    sd = seeds.to(dev)
    values = torch.unique(grid.palette.flatten())
    z, _ = ascend(neurons, starts.to(dev), groups, bounds, thr, s.ascent, search.settings.deadline, values)
    col = _round(grid, z)
    full = grid.valid[sd].gather(2, col.unsqueeze(2)).squeeze(2)
    value, _, _ = group_scores(neurons, _images(grid, sd, full, col), groups, thr)
    row, slot = (value > thr).nonzero(as_tuple=True)
    tests: list[tuple[int, Tensor, Tensor]] = []
    rs = ReachSettings(max_reverts=s.max_reverts, groups=None, polish=None)
    for r0 in range(0, row.numel(), s.sparse_rows):
        r, j = row[r0:r0 + s.sparse_rows], slot[r0:r0 + s.sparse_rows]
        mask = _sparsify(search, sd[r], col[r], groups.to(dev)[r, j], rs)
        for i in range(len(r)):
            if bool(mask[i].any()):
                tests.append((int(sd[r[i]]), mask[i].nonzero().squeeze(1).cpu(), col[r[i]][mask[i]].cpu()))
    return tests


def group_phase(search: Search, s: GroupSettings, bounds: tuple[float, float]) -> LevelRecord | None:
    """Run the batched phase on ``search``'s open neurons; commits the re-checked tests after
    every round (:func:`.reach._commit`) and returns its record (``t`` = the largest L0 kept),
    or ``None`` if nothing is open. Raises ``_Stop`` after committing when the deadline passes."""
    if search.open().numel() == 0:
        return None
    start = time.monotonic()
    found = longest = evaluated = 0
    stop = False
    for rnd in range(s.rounds):
        cols = search.open()
        if cols.numel() == 0:
            break
        # later rounds: the harder neurons, in smaller groups, with longer ascents
        rs = replace(s, ascent=replace(s.ascent, steps=s.ascent.steps * (1 + rnd)))
        groups = lattice_groups(search.neurons, cols, s.stride, max(1, s.max_group >> rnd))
        seeds, starts = group_starts(search, cols, groups, rnd, s.ascent.margin, tests=s.from_tests)
        tests: list[tuple[int, Tensor, Tensor]] = []
        for r0 in range(0, len(groups), s.rows):
            tests += _tests_of_batch(search, groups[r0:r0 + s.rows], seeds[r0:r0 + s.rows], starts[r0:r0 + s.rows],
                                     bounds, rs)
            evaluated += min(s.rows, len(groups) - r0)
            if search.settings.deadline is not None and time.monotonic() > search.settings.deadline:
                stop = True
                break
        got, lg = _commit(search, tests)
        found, longest = found + got, max(longest, lg)
        if stop:
            break
    record = LevelRecord(longest, "group" if not stop else "group (stopped)", evaluated, found,
                         time.monotonic() - start)
    search.levels.append(record)
    if stop:
        raise _Stop
    return record
