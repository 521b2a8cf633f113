"""The attack pipeline on shards of inputs: screen → candidate paths → tighten → refine.

:func:`search_shard` runs the pipeline on one shard (:class:`~.searcher.Searcher`);
:class:`ShardRunner` runs it shard by shard over a set of inputs and keeps the best example
found for each.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from ...execution.precision import Rechecked
from .moves import refine
from .paths import candidate_paths
from .screening import screen, witness
from .searcher import CountingObjective, SearchContext, Searcher, pick

__all__ = ["ProgressBar", "ShardRunner", "search_shard"]


class ProgressBar(Protocol):
    """The part of a ``tqdm`` bar the runner uses."""

    def update(self, n: int = 1) -> object: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...

    def close(self) -> None: ...


def search_shard(s: Searcher) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the pipeline on one shard. Returns ``found`` ``(A,)`` and examples ``(A, C, H, W)``."""
    unit = screen(s)
    found, x = witness(s, unit)
    rest = (~found).nonzero().squeeze(1)
    if rest.numel() == 0 or s.deadline.passed():
        return found, x
    owner, cand = candidate_paths(s, unit, rest)  # owner: the position in `rest`
    if owner.numel() == 0:
        return found, x
    cand = s.tighten(rest[owner], cand)
    choice = best_rows(s, rest, owner, cand)
    has = choice >= 0
    rows = rest[has]
    x[rows] = refine(s, rows, cand[choice[has]])
    found[rows] = True
    return found, x


def best_rows(s: Searcher, rest: torch.Tensor, owner: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Per position in ``rest``, the adversarial candidate row with the smallest L0, then the
    lowest margin (ties: lowest row); ``-1`` where none.

    Args:
        rest: ``(B,)`` inputs; owner: ``(R,)`` position in ``rest`` of each candidate row;
        cand: ``(R, C, H, W)`` the candidates.
    """
    g = rest[owner]
    score, succ = s.margins_of(g, cand)
    l0 = s.space.l0(cand, s.x0[g]).to(torch.float64)
    # lexicographic (l0, score): scores are squashed into (-0.5, 0.5)
    key = l0 + torch.atan(score) / math.pi
    return pick(owner, key, succ, int(rest.numel()))


class ShardRunner:
    """Searches inputs shard by shard and keeps the best example of each.

    Args:
        ctx: the shared search settings.
        x0: ``(N, C, H, W)`` all originals (model device and dtype); ref: ``(N,)`` their labels.
        shard_size: inputs searched together.
        bar: a progress bar (``None``: none); total: the inputs it counts.

    Attributes:
        best: ``(N, C, H, W)`` the examples (the original where none was found).
        found: ``(N,)`` bool (CPU): an example was found.
        gradients: rows whose margin gradient was computed, in total.
    """

    def __init__(self, ctx: SearchContext, x0: torch.Tensor, ref: torch.Tensor, shard_size: int,
                 bar: ProgressBar | None = None, total: int = 0) -> None:
        self.ctx, self.x0, self.ref, self.shard_size = ctx, x0, ref, shard_size
        self.bar, self.total = bar, total
        self.best = x0.clone()
        self.found = torch.zeros(x0.shape[0], dtype=torch.bool)
        self.gradients = 0

    def run(self, inputs: torch.Tensor, objective: CountingObjective | Rechecked, progress: bool = True,
            again: bool = False) -> None:
        """Search ``inputs`` ``(M,)`` (CPU indices) with ``objective`` within the time budget:
        each shard first adds its inputs' share to it (not when ``again``: a second search of
        inputs already counted); a shard whose allowance is used up is skipped."""
        for s0 in range(0, int(inputs.numel()), self.shard_size):
            idx = inputs[s0 : s0 + self.shard_size]
            if not again:
                self.ctx.deadline.grant(int(idx.numel()))
            if self.ctx.deadline.passed():
                continue
            di = idx.to(self.x0.device)
            if isinstance(objective, Rechecked):
                objective.calibrate(self.ctx.model, self.x0[di], self.ref[di])
            searcher = Searcher(self.ctx, self.x0[di], self.ref[di], objective)
            f, xs = search_shard(searcher)
            self.gradients += searcher.gradients
            self.best[di] = xs
            self.found[idx] = f.cpu()
            if self.bar is not None and progress:
                self.bar.update(int(idx.numel()))
                self.bar.set_postfix_str(f"found {int(self.found.sum())}/{self.total}")

    def forget(self, inputs: torch.Tensor) -> None:
        """Drop the examples of ``inputs`` ``(M,)`` (before searching them again)."""
        di = inputs.to(self.x0.device)
        self.best[di] = self.x0[di]
        self.found[inputs] = False
