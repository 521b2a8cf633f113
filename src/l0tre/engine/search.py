"""The per-input search for adversarial examples after a level's pass, as executor work.

After a shard's level-``t`` pass, each input still open gets an upper-bound search
(:func:`~.upper.accumulate`: its subsets in sensitivity order, applied cumulatively) and, where
that finds an example, greedy tightening (:func:`~.tighten.tighten`). Both are per input: an
input's example and its evaluation count do not depend on the inputs searched with it. So the
search is a :class:`SearchTask` whose work units are ranges of its rows, run by the same
:class:`~.executor.Executor` as the pass (on a cluster's workers: the tightening's O(m²)
evaluations per example of m features are most of a cheap level's work). The driver re-checks
every candidate on the model before a bound moves (:func:`~.update.accept`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..classifier import Classifier
from ..execution.incremental import IncrementalPrefix
from ..objectives import Objective
from .chain_rows import exact_objective
from .executor import WorkUnit
from .features import FeatureSpace
from .tighten import tighten
from .upper import accumulate

__all__ = ["SearchResult", "SearchTask", "search_units"]

SEARCH_UNITS_PER_WORKER = 2  # with a parallel executor: units per worker (inputs differ a lot in cost)


@dataclass(frozen=True)
class SearchResult:
    """One unit's rows: ``found`` ``(B,)`` bool, ``x`` ``(B, C, H, W)`` their tightened examples
    (the original where none was found), ``evaluations`` ``(1,)`` int64 model evaluations."""

    found: torch.Tensor
    x: torch.Tensor
    evaluations: torch.Tensor


@dataclass(frozen=True)
class SearchTask:
    """The search of one shard's open inputs (shared by all its units).

    Attributes:
        x0: ``(A, C, H, W)`` the inputs (model device); ref: ``(A,)`` references.
        feats: ``(A, K, t)`` their best subsets in order; vals: ``(A, K, t, Cf)`` the subsets'
            values; present: ``(A, K)`` which slots hold a subset.
        batch_size: rows per plain model call; tighten_rows: rows per call through ``incremental``
            (the level-1 chain: a revert is a one-feature change).
        on_batch: progress callback (unused here: the loop counts the search's evaluations).
    """

    model: Classifier
    objective: Objective
    space: FeatureSpace
    x0: torch.Tensor
    ref: torch.Tensor
    feats: torch.Tensor
    vals: torch.Tensor
    present: torch.Tensor
    batch_size: int
    tighten_rows: int
    incremental: IncrementalPrefix | None = None
    on_batch: Callable[[int], None] | None = None

    @property
    def rows(self) -> int:
        return int(self.x0.shape[0])

    def run(self, unit: WorkUnit) -> SearchResult:
        """Search and tighten rows ``[unit.r0, unit.r1)``."""
        sl = slice(unit.r0, unit.r1)
        x0, ref = self.x0[sl], self.ref[sl]
        found, x, evaluations = accumulate(self.model, self.objective, self.space, x0, ref, self.feats[sl],
                                           self.vals[sl], self.present[sl], batch_size=self.batch_size,
                                           gallop=True)
        if bool(found.any()):
            fi = found.nonzero().squeeze(1)
            # through the chain, single reverts are exact float32 rows (no screen needed)
            objective = self.objective if self.incremental is None else exact_objective(self.objective)
            x_t, spent = tighten(self.model, objective, self.space, x0[fi], ref[fi], x[fi],
                                 batch_size=self.tighten_rows, incremental=self.incremental)
            x[fi] = x_t
            evaluations += spent
        return SearchResult(found=found, x=x, evaluations=torch.tensor([evaluations], dtype=torch.int64))


def search_units(shard: int, rows: int, parallelism: int) -> list[WorkUnit]:
    """Units over ``rows`` search rows: one (every input batched together) for a sequential
    executor, else about ``SEARCH_UNITS_PER_WORKER × parallelism`` (at least one row each).
    Units never change a result (see the module docstring)."""
    if rows <= 0:
        return []
    count = 1 if parallelism <= 1 else min(rows, SEARCH_UNITS_PER_WORKER * parallelism)
    edges = [rows * i // count for i in range(count + 1)]
    return [WorkUnit(shard, edges[i], edges[i + 1]) for i in range(count)]
