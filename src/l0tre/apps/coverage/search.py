"""The level-by-level search for tests that cover the uncovered neurons (paper Sec. 5.3, Eq. 19:
"the label changes" replaced by "the neuron fires").

Level ``t = 1, 2, …``: candidates at L0 distance exactly ``t`` from a seed (:mod:`.candidates`)
are evaluated in batches and *all* uncovered neurons are read from every forward pass; per
neuron the level keeps the firing candidate of highest activation. Neurons found at level ``t``
are not searched again, so each keeps its smallest L0 on the grid that the search reached.

* A level is ``exhaustive`` when all its candidates fit ``max_evaluations`` (then the L0 of
  every test found is the minimum over the grid, and a neuron not found needs more pixels).
  Seeds are visited in order of how close the uncovered neurons are to firing on them.
* Level 1 otherwise (``guided``) evaluates, per uncovered neuron, the single changes of its
  closest seed that a first-order estimate (the gradient of the neuron's pre-activation) ranks
  best, within the budget. Level 1 remembers, per uncovered neuron, its ``top_m`` best single
  changes by closeness.
* Higher levels that do not fit are ``targeted``: ``t``-combinations of a neuron's best single
  changes of one seed, and (after a guided level 1) the first ``t`` changes of the neuron's
  gradient-ranked path on its closest seed (its best changes applied cumulatively).

Every test is re-checked at the end of its level by a separate forward pass of the test image;
only then are its neurons covered.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .candidates import Candidates, Grid, combine, exhaustive, guided, paths
from .neurons import Neurons, gradients

__all__ = ["LevelRecord", "Search", "SearchSettings"]


@dataclass(frozen=True)
class SearchSettings:
    """``batch_size`` rows per forward pass; ``max_evaluations`` candidates per level;
    ``top_m`` single changes kept per neuron; ``per_neuron`` combinations per neuron and level;
    ``path_length`` the longest cumulative path per neuron;
    ``deadline`` a ``time.monotonic()`` value or ``None``; ``show_progress`` a tqdm bar."""

    threshold: float
    batch_size: int
    max_evaluations: int
    top_m: int = 8
    per_neuron: int = 64
    path_length: int = 64
    deadline: float | None = None
    show_progress: bool = False


@dataclass(frozen=True)
class LevelRecord:
    """One level: ``t``, ``mode`` (exhaustive / partial / targeted), candidates evaluated,
    neurons newly covered (re-checked) and seconds."""

    t: int
    mode: str
    evaluations: int
    covered: int
    seconds: float


class _Stop(Exception):
    """The time budget ran out inside a level."""


@dataclass
class _LevelBest:
    """The best firing candidate per uncovered neuron within one level."""

    value: Tensor
    cand: Candidates

    @classmethod
    def empty(cls, u: int, t: int) -> _LevelBest:
        z = torch.zeros(u, dtype=torch.int64)
        return cls(torch.full((u,), float("-inf")), Candidates(z.clone(), torch.zeros(u, t, dtype=torch.int64),
                                                               torch.zeros(u, t, dtype=torch.int64)))


@dataclass
class Search:
    """The state of one coverage search over ``grid``'s seeds (module docstring).

    Attributes:
        covered: ``(T,)`` neurons covered so far; ``excluded`` ``(T,)`` neurons not searched
            (proven unreachable); ``test_of`` ``(T,)`` index of the test that covers a neuron
            (``-1``: covered by a seed, or not covered); ``tests``: the kept tests as
            ``(seed, positions, colours)``; ``levels``: one record per level.
    """

    neurons: Neurons
    grid: Grid
    settings: SearchSettings
    covered: Tensor
    excluded: Tensor
    test_of: Tensor = field(init=False)
    tests: list[tuple[int, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    levels: list[LevelRecord] = field(default_factory=list)
    _singles: tuple[Tensor, Candidates, Tensor] | None = None
    _paths: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    def __post_init__(self) -> None:
        self.test_of = torch.full_like(self.covered, -1, dtype=torch.int64)

    def open(self) -> Tensor:
        """Indices ``(U,)`` of the neurons still to find."""
        return (~self.covered & ~self.excluded).nonzero().squeeze(1)

    def _values(self, cand: Candidates, cols: Tensor) -> tuple[Tensor, Tensor]:
        v, s = self.neurons.values(self.grid.images(cand), cols)
        return v.float().cpu(), s.float().cpu()

    def seed_order(self, cols: Tensor) -> tuple[list[int], Tensor]:
        """Seeds by how close the neurons ``cols`` are to firing on them (a seed that is the
        k-th closest for some neuron comes before every seed that is never closer than k-th), and
        the closest seed of each neuron ``(U,)``."""
        n = self.grid.x.shape[0]
        scores = torch.cat([self.neurons.values(self.grid.x[i:i + self.settings.batch_size], cols)[1].float().cpu()
                            for i in range(0, n, self.settings.batch_size)])
        rank = torch.empty_like(scores, dtype=torch.int64)
        rank.scatter_(0, scores.argsort(dim=0, descending=True, stable=True),
                      torch.arange(n).unsqueeze(1).expand(n, cols.numel()).contiguous())
        best = rank.min(dim=1).values
        order = sorted(range(n), key=lambda i: (int(best[i]), -float(scores[i].max())))
        return order, scores.argmax(dim=0)

    def run_level(self, t: int) -> LevelRecord | None:
        """Search level ``t``; ``None`` when nothing is left to find. Raises ``_Stop`` (caught by
        the caller) after committing what was found when the deadline passes."""
        cols = self.open()
        if cols.numel() == 0:
            return None
        start = time.monotonic()
        order, closest = self.seed_order(cols)
        counts = self.grid.count(t, torch.tensor(order))
        budget = self.settings.max_evaluations
        if float(counts.sum()) <= budget:
            mode, batches = "exhaustive", self._exhaustive(order, t)
        elif t == 1:
            mode, batches = "guided", self._guided(cols, closest)
        elif self._singles is not None:
            mode, batches = "targeted", self._targeted(cols, t)
        else:
            return LevelRecord(t, "skipped", 0, 0, 0.0)
        best = _LevelBest.empty(cols.numel(), t)
        evaluated = 0
        stop: BaseException | None = None
        try:
            for cand in self._progress(batches, t, mode, min(float(counts.sum()), budget)):
                value, score = self._values(cand, cols)
                self._update(best, cand, value)
                if t == 1:
                    self._remember(cand, score, cols)
                evaluated += len(cand)
                if self.settings.deadline is not None and time.monotonic() > self.settings.deadline:
                    raise _Stop
        except (_Stop, KeyboardInterrupt) as exc:
            stop = exc
        found = self._commit(best, cols)
        record = LevelRecord(t, mode if stop is None else f"{mode} (stopped)", evaluated, found,
                             time.monotonic() - start)
        self.levels.append(record)
        if stop is not None:
            raise stop
        return record

    def _progress(self, batches: Iterable[Candidates], t: int, mode: str, total: float) -> Iterable[Candidates]:
        if not self.settings.show_progress:
            yield from batches
            return
        from tqdm.auto import tqdm

        with tqdm(total=int(total), desc=f"coverage t={t} ({mode})", unit="test", leave=False) as bar:
            for cand in batches:
                yield cand
                bar.update(len(cand))

    def _exhaustive(self, order: list[int], t: int, budget: int | None = None) -> Iterable[Candidates]:
        spent = 0
        for seed in order:
            if budget is not None and spent >= budget:
                return
            for cand in exhaustive(self.grid, seed, t, self.settings.batch_size):
                spent += len(cand)
                yield cand

    def _guided(self, cols: Tensor, closest: Tensor) -> Iterable[Candidates]:
        """Level 1 when it does not fit: per open neuron, the single changes of its closest seed
        that a first-order estimate ranks best (:func:`.candidates.guided`), within the budget."""
        q = max(4, min(64, self.settings.max_evaluations // max(1, cols.numel())))
        rows = max(1, self.settings.batch_size // 4)
        parts, path_pos, path_col = [], [], []
        for r0 in range(0, cols.numel(), rows):
            seeds = closest[r0:r0 + rows]
            grads = gradients(self.neurons, self.grid.x[seeds.to(self.grid.x.device)], cols[r0:r0 + rows])
            parts.append(guided(self.grid, seeds, grads, q))
            pos, col = paths(self.grid, seeds, grads, self.settings.path_length)
            path_pos.append(pos)
            path_col.append(col)
            if self.settings.deadline is not None and time.monotonic() > self.settings.deadline:
                raise _Stop
        self._paths = (cols, closest, torch.cat(path_pos), torch.cat(path_col))
        key = torch.unique(torch.cat([torch.cat([c.seed.unsqueeze(1), c.pos, c.col], dim=1) for c in parts]), dim=0)
        cand = Candidates(key[:, 0], key[:, 1:2], key[:, 2:3]).rows(slice(0, self.settings.max_evaluations))
        for r0 in range(0, len(cand), self.settings.batch_size):
            yield cand.rows(slice(r0, r0 + self.settings.batch_size))

    def _targeted(self, cols: Tensor, t: int) -> Iterable[Candidates]:
        assert self._singles is not None  # checked by run_level
        s_cols, singles, s_val = self._singles
        where = torch.searchsorted(s_cols, cols)  # every open neuron was open at level 1
        m = s_val.shape[0]
        idx = torch.arange(m).unsqueeze(1) * s_cols.numel() + where.unsqueeze(0)  # (m, U)
        groups = torch.where(torch.isfinite(s_val[:, where]), idx, -1).T.contiguous()
        cand = combine(singles, groups, t, self.settings.per_neuron)
        if self._paths is not None and t <= self._paths[2].shape[1]:
            p_cols, p_seed, p_pos, p_col = self._paths
            rows = torch.searchsorted(p_cols, cols)
            pos, col = p_pos[rows, :t], p_col[rows, :t]
            ok = (pos >= 0).all(dim=1)
            srt = pos[ok].sort(dim=1)
            key = torch.cat([torch.cat([cand.seed.unsqueeze(1), cand.pos, cand.col], dim=1),
                             torch.cat([p_seed[rows][ok].unsqueeze(1), srt.values,
                                        col[ok].gather(1, srt.indices)], dim=1)])
            key = torch.unique(key, dim=0)
            cand = Candidates(key[:, 0].contiguous(), key[:, 1:1 + t].contiguous(), key[:, 1 + t:].contiguous())
        cand = cand.rows(slice(0, self.settings.max_evaluations))
        for r0 in range(0, len(cand), self.settings.batch_size):
            yield cand.rows(slice(r0, r0 + self.settings.batch_size))

    def _update(self, best: _LevelBest, cand: Candidates, value: Tensor) -> None:
        masked = torch.where(value > self.settings.threshold, value, float("-inf"))
        bv, br = masked.max(dim=0)
        upd = bv > best.value
        if bool(upd.any()):
            best.value[upd] = bv[upd]
            best.cand.seed[upd] = cand.seed[br[upd]]
            best.cand.pos[upd] = cand.pos[br[upd]]
            best.cand.col[upd] = cand.col[br[upd]]

    def _remember(self, cand: Candidates, score: Tensor, cols: Tensor) -> None:
        """Keep the ``top_m`` single changes per neuron by closeness (level 1)."""
        m = self.settings.top_m
        if self._singles is None:
            empty = torch.zeros(m, cols.numel(), dtype=torch.int64)
            self._singles = (cols, Candidates(empty, empty.unsqueeze(2), empty.unsqueeze(2)),
                             torch.full((m, cols.numel()), float("-inf")))
        _, old, old_val = self._singles
        r = len(cand)
        vals = torch.cat([old_val, score])
        top = vals.topk(min(m, vals.shape[0]), dim=0).indices  # (m, U)
        seed = torch.cat([old.seed.view(m, -1), cand.seed.unsqueeze(1).expand(r, cols.numel())])
        pos = torch.cat([old.pos.view(m, -1), cand.pos[:, :1].expand(r, cols.numel())])
        col = torch.cat([old.col.view(m, -1), cand.col[:, :1].expand(r, cols.numel())])
        new = Candidates(seed.gather(0, top).flatten(), pos.gather(0, top).reshape(-1, 1),
                         col.gather(0, top).reshape(-1, 1))
        self._singles = (cols, new, vals.gather(0, top))

    def _commit(self, best: _LevelBest, cols: Tensor) -> int:
        """Re-check the level's tests by a separate forward pass; cover what they activate."""
        hit = torch.isfinite(best.value).nonzero().squeeze(1)
        if hit.numel() == 0:
            return 0
        key = torch.cat([best.cand.seed[hit].unsqueeze(1), best.cand.pos[hit], best.cand.col[hit]], dim=1)
        uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
        t = best.cand.pos.shape[1]
        tests = Candidates(uniq[:, 0], uniq[:, 1:1 + t], uniq[:, 1 + t:])
        fired = torch.cat([self._values(tests.rows(slice(r, r + self.settings.batch_size)), cols[hit])[0]
                           for r in range(0, len(tests), self.settings.batch_size)])
        ok = fired[inverse, torch.arange(hit.numel())] > self.settings.threshold
        first = len(self.tests)
        used = torch.unique(inverse[ok])
        remap = torch.full((len(tests),), -1, dtype=torch.int64)
        remap[used] = torch.arange(used.numel()) + first
        for r in used.tolist():
            self.tests.append((int(tests.seed[r]), tuple(tests.pos[r].tolist()), tuple(tests.col[r].tolist())))
        neurons = cols[hit[ok]]
        self.covered[neurons] = True
        self.test_of[neurons] = remap[inverse[ok]]
        return int(neurons.numel())
