"""The executor seam: where work units run.

The anytime loop splits each shard's level-``t`` pass into work units (ranges of subset
ranks, :class:`WorkUnit`) and hands them to an :class:`Executor`, which yields each unit's
result as it finishes, in any order. Unit results merge by a total order
(:func:`~.sensitivity.merge_units`), so the bounds do not depend on where or in which order
units ran. :class:`InProcessExecutor` (the default) runs them here, one after the other; a
cluster executor implements the same ``map`` and needs no change to the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch

from ..classifier import Classifier
from ..execution.incremental import IncrementalPrefix
from ..execution.pairs import PairRecipe, PairTable
from ..objectives import Objective
from .sensitivity import LevelContext, UnitResult, evaluate_unit

__all__ = ["Executor", "InProcessExecutor", "ShardTask", "Task", "WorkUnit", "executor_parallelism"]

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


@dataclass(frozen=True)
class WorkUnit:
    """Subsets of ranks ``[r0, r1)`` of level ``t`` for the inputs of shard ``shard``."""

    shard: int
    r0: int
    r1: int


@dataclass(frozen=True)
class ShardTask:
    """Everything a unit of one shard needs (shared by all its units).

    Attributes:
        x0: ``(Na, C, H, W)`` the shard's inputs (model device); ref: ``(Na,)`` references.
        valid: ``(Na, n, P1)`` valid colours; inputs: ``(Na,)`` global indices.
        batch_size: rows per model call; k: subsets kept per input.
        incremental, pairs: the execution plan's fast paths for this level (or none).
        pair_recipe: builds ``pairs`` where the units run, on the first unit (when ``pairs`` is empty).
        on_batch: progress callback, called with the evaluations of each model call.
    """

    model: Classifier
    objective: Objective
    x0: torch.Tensor
    ref: torch.Tensor
    valid: torch.Tensor
    inputs: torch.Tensor
    ctx: LevelContext
    batch_size: int
    k: int
    incremental: IncrementalPrefix | None = None
    pairs: Sequence[PairTable] = ()
    on_batch: Callable[[int], None] | None = None
    pair_recipe: PairRecipe | None = None

    def run(self, unit: WorkUnit) -> UnitResult:
        """Evaluate one unit (all grid points of its subsets for every input of the shard)."""
        return evaluate_unit(
            self.model, self.objective, self.x0, self.ref, self.valid, self.inputs, self.ctx, unit.r0, unit.r1,
            batch_size=self.batch_size, k=self.k, on_batch=self.on_batch, incremental=self.incremental,
            pairs=self.pairs or (() if self.pair_recipe is None else self.pair_recipe.tables(self.model, self.x0)),
        )


class Task(Protocol[R_co]):
    """Work split into units: a shard's pass (:class:`ShardTask`, units of subset ranks) or its
    search for examples (:class:`~.search.SearchTask`, units of its rows)."""

    @property
    def on_batch(self) -> Callable[[int], None] | None: ...

    def run(self, unit: WorkUnit) -> R_co: ...


class Executor(Protocol):
    """Runs work units; results may come back in any order."""

    def map(self, task: Task[R], units: Sequence[WorkUnit]) -> Iterator[tuple[WorkUnit, R]]:
        """Yield ``(unit, result)`` for every unit of ``units``, each exactly once, in any order.
        When the iterator is a generator, the loop closes it when it stops early (time budget,
        Ctrl-C): a generator's ``finally`` is where outstanding units are cancelled."""
        ...


def executor_parallelism(executor: object) -> int:
    """How many units ``executor`` runs at the same time: its ``parallelism`` attribute (an
    ``int``, e.g. the workers of a cluster) where it has one, else 1. The planner cuts each shard
    into enough units to keep that many busy (:func:`~.planning.plan_level`); results do not
    depend on it."""
    value = getattr(executor, "parallelism", 1)
    return value if isinstance(value, int) and value >= 1 else 1


class InProcessExecutor:
    """Runs units in this process, in the order given, lazily (closing stops the work)."""

    def map(self, task: Task[R], units: Sequence[WorkUnit]) -> Generator[tuple[WorkUnit, R], None, None]:
        for unit in units:
            yield unit, task.run(unit)
