"""Candidate tests: a seed with ``t`` pixels set to colours of the ε-grid.

A batch of candidates is three tensors: ``seed`` ``(R,)``, ``pos`` ``(R, t)`` sorted pixel
indices ``h·W + w`` and ``col`` ``(R, t)`` colour indices into the palette ``(P, C)``
(:func:`l0tre.engine.grid.colours`). Every pixel of a candidate differs from the seed's (colours
equal to the original are skipped), so a level-``t`` candidate is at L0 distance exactly ``t``
(pixels, all channels of a position counting 1).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ...engine.features import FeatureKind, FeatureSpace
from ...engine.subspaces import binomial_table, count_points, n_subsets, unrank

__all__ = ["Candidates", "Grid", "combine", "exhaustive", "guided", "paths"]


@dataclass(frozen=True)
class Candidates:
    """``seed`` ``(R,)``, ``pos`` ``(R, t)``, ``col`` ``(R, t)`` (module docstring)."""

    seed: Tensor
    pos: Tensor
    col: Tensor

    def __len__(self) -> int:
        return int(self.seed.shape[0])

    def rows(self, idx: Tensor | slice) -> Candidates:
        return Candidates(self.seed[idx], self.pos[idx], self.col[idx])


@dataclass(frozen=True, eq=False)
class Grid:
    """The seeds ``x`` ``(N, C, H, W)``, the palette ``(P, C)`` and which colours are real
    changes of each pixel, ``valid`` ``(N, H·W, P)``."""

    x: Tensor
    palette: Tensor
    valid: Tensor

    @classmethod
    def build(cls, x: Tensor, palette: Tensor) -> Grid:
        space = FeatureSpace(FeatureKind.PIXEL, (x.shape[1], x.shape[2], x.shape[3]))
        pal = palette.to(device=x.device, dtype=x.dtype)
        valid = (space.values(x).unsqueeze(2) != pal.view(1, 1, *pal.shape)).any(dim=3)
        return cls(x, pal, valid)

    @property
    def space(self) -> FeatureSpace:
        return FeatureSpace(FeatureKind.PIXEL, (self.x.shape[1], self.x.shape[2], self.x.shape[3]))

    @property
    def n(self) -> int:
        return int(self.valid.shape[1])

    def count(self, t: int, seeds: Tensor) -> Tensor:
        """Level-``t`` candidates of each seed ``(S,)`` → float64 ``(S,)``."""
        return count_points(self.valid[seeds].sum(2).cpu(), t)

    def images(self, cand: Candidates) -> Tensor:
        """The candidates as images ``(R, C, H, W)``."""
        base = self.x[cand.seed.to(self.x.device)].clone()
        if cand.pos.shape[1] == 0:
            return base
        vals = self.palette[cand.col.to(self.x.device)]  # (R, t, C)
        return self.space.scatter(base, cand.pos.to(self.x.device), vals)


def exhaustive(grid: Grid, seed: int, t: int, rows: int) -> Iterator[Candidates]:
    """Every level-``t`` candidate of one seed, in batches of about ``rows`` (subsets in colex
    order, colours in palette order)."""
    n, p = grid.n, grid.palette.shape[0]
    total = n_subsets(n, t)
    table = binomial_table(n, t)
    combos = torch.cartesian_prod(*([torch.arange(p)] * t)).reshape(-1, t)  # (P^t, t)
    valid = grid.valid[seed].cpu()
    per_chunk = max(1, rows // combos.shape[0])
    for r0 in range(0, total, per_chunk):
        ranks = torch.arange(r0, min(total, r0 + per_chunk))
        subsets = unrank(ranks, n, t, table)  # (S, t)
        pos = subsets.repeat_interleave(combos.shape[0], dim=0)
        col = combos.repeat(subsets.shape[0], 1)
        ok = valid[pos, col].all(dim=1)
        if bool(ok.any()):
            pos, col = pos[ok], col[ok]
            yield Candidates(torch.full((pos.shape[0],), seed, dtype=torch.int64), pos, col)


def combine(singles: Candidates, groups: Tensor, t: int, per_group: int) -> Candidates:
    """Level-``t`` candidates from single changes: every ``t``-combination, within one group
    (one neuron's best single changes, ``groups`` ``(G, m)`` indices into ``singles``, ``-1``
    unused), of changes of the same seed at distinct pixels; at most ``per_group`` per group,
    best-ranked combinations first (the sum of the members' ranks). Duplicates are removed."""
    m = groups.shape[1]
    combos = torch.tensor(sorted(itertools.combinations(range(m), t), key=sum), dtype=torch.int64)
    if combos.numel() == 0:
        return Candidates(torch.empty(0, dtype=torch.int64), torch.empty(0, t, dtype=torch.int64),
                          torch.empty(0, t, dtype=torch.int64))
    idx = groups[:, combos]  # (G, K, t)
    ok = (idx >= 0).all(dim=2)
    safe = idx.clamp(min=0)
    seed, pos, col = singles.seed[safe], singles.pos[safe, 0], singles.col[safe, 0]
    ok &= (seed == seed[..., :1]).all(dim=2)
    srt = pos.sort(dim=2)
    ok &= (srt.values[..., 1:] != srt.values[..., :-1]).all(dim=2)
    keep = ok & (ok.cumsum(dim=1) <= per_group)
    pos, col = srt.values[keep], col[keep].gather(1, srt.indices[keep])
    seed = seed[keep][:, 0]
    key = torch.cat([seed.unsqueeze(1), pos, col], dim=1)
    key = torch.unique(key, dim=0)
    return Candidates(key[:, 0].contiguous(), key[:, 1:1 + t].contiguous(), key[:, 1 + t:].contiguous())


def guided(grid: Grid, seeds: Tensor, grads: Tensor, q: int) -> Candidates:
    """Single changes ranked by a first-order estimate: for row ``r`` (seed ``seeds[r]``, gradient
    ``grads[r]`` ``(C, H, W)`` of the quantity to raise), the ``q`` valid (pixel, colour) changes
    of largest ``Σ_c grad[c, p] · (colour_c − x[c, p])``. Only a ranking: every candidate is
    evaluated on the model before it counts. → ``R·q`` candidates or fewer (duplicates removed)."""
    x = grid.x[seeds.to(grid.x.device)]
    values = grid.space.values(x)  # (R, n, C)
    g = grid.space.values(grads.to(x.dtype))  # (R, n, C)
    pal = grid.palette  # (P, C)
    gain = (g.unsqueeze(2) * (pal.view(1, 1, *pal.shape) - values.unsqueeze(2))).sum(3)  # (R, n, P)
    gain = gain.masked_fill(~grid.valid[seeds.to(grid.valid.device)], float("-inf")).flatten(1)
    top = gain.topk(min(q, gain.shape[1]), dim=1)
    ok = torch.isfinite(top.values).cpu()
    idx = top.indices.cpu()
    p = pal.shape[0]
    seed = seeds.cpu().unsqueeze(1).expand_as(idx)[ok]
    key = torch.unique(torch.stack([seed, idx[ok] // p, idx[ok] % p], dim=1), dim=0)
    return Candidates(key[:, 0].contiguous(), key[:, 1:2].contiguous(), key[:, 2:3].contiguous())


def paths(grid: Grid, seeds: Tensor, grads: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Per row, the ``length`` pixels of largest first-order gain, each with its best colour,
    best first (as :func:`guided`, one colour per pixel): ``pos``, ``col`` ``(R, length)``;
    ``pos`` is ``-1`` past the valid changes. Prefixes of a path are the candidates that apply
    a neuron's best changes cumulatively (the paper's Alg. 2 order)."""
    x = grid.x[seeds.to(grid.x.device)]
    values, g = grid.space.values(x), grid.space.values(grads.to(x.dtype))
    pal = grid.palette
    gain = (g.unsqueeze(2) * (pal.view(1, 1, *pal.shape) - values.unsqueeze(2))).sum(3)  # (R, n, P)
    gain = gain.masked_fill(~grid.valid[seeds.to(grid.valid.device)], float("-inf"))
    best, colour = gain.max(dim=2)  # (R, n)
    top = best.topk(min(length, best.shape[1]), dim=1)
    pos = torch.where(torch.isfinite(top.values), top.indices, -1).cpu()
    return pos, colour.gather(1, top.indices).cpu()
