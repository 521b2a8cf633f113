"""The level-1 table of every pixel, read at the executor seam.

The engine keeps, per input and level, only the ``top_k`` most sensitive subsets; a saliency map
needs all of them. :class:`RecordingExecutor` runs each level-1 work unit keeping every subset of
the unit, records per feature the lowest score (margin), the lowest confidence and the colour of
the lowest score, and hands the engine the unit's top-``top_k`` part, exactly what the engine
would have computed itself (the top-K order is a total order, so a prefix of a longer sorted
list is the shorter list).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Sequence
from typing import TypeVar, cast

import torch

from ...engine.executor import Executor, InProcessExecutor, ShardTask, Task, WorkUnit, executor_parallelism
from ...engine.sensitivity import UnitResult

R = TypeVar("R")

__all__ = ["Level1Table", "RecordingExecutor"]


@dataclasses.dataclass(frozen=True)
class Level1Table:
    """Per input and feature: the level-1 pass (CPU tensors, ``(N, n)`` each).

    Attributes:
        score: lowest score (margin) over the feature's valid colours (``inf``: none valid).
        confidence: lowest confidence (``log c_j``) over them (``inf``: none valid).
        point: colour index (palette row) of the lowest score (``-1``: none valid).
    """

    score: torch.Tensor
    confidence: torch.Tensor
    point: torch.Tensor


class RecordingExecutor:
    """An executor that records the whole level-1 table while running units with ``inner``.

    Args:
        inputs: ``N``, the run's inputs; features: ``n``, the features of its space.
        inner: the executor that runs the units (default: in this process).
    """

    def __init__(self, inputs: int, features: int, inner: Executor | None = None) -> None:
        self.inner: Executor = inner or InProcessExecutor()
        self.n = features
        self.score = torch.full((inputs, features), float("inf"), dtype=torch.float64)
        self.confidence = torch.full((inputs, features), float("inf"), dtype=torch.float64)
        self.point = torch.full((inputs, features), -1, dtype=torch.int64)

    def table(self) -> Level1Table:
        """The recorded table (copies)."""
        return Level1Table(self.score.clone(), self.confidence.clone(), self.point.clone())

    @property
    def parallelism(self) -> int:
        """That of ``inner`` (the planner cuts work for it)."""
        return executor_parallelism(self.inner)

    def map(self, task: Task[R], units: Sequence[WorkUnit]) -> Generator[tuple[WorkUnit, R], None, None]:
        """Run ``units``; at level 1 each keeps all its subsets, recorded before the engine gets
        its ``task.k`` first ones (other work runs unchanged)."""
        if not isinstance(task, ShardTask) or task.ctx.t != 1:
            yield from self.inner.map(task, units)
            return
        wide = dataclasses.replace(task, k=max(task.k, self.n))
        for unit, res in self.inner.map(wide, units):
            self._record(res)
            yield unit, cast(R, _prefix(cast(UnitResult, res), task.k))

    def _record(self, res: UnitResult) -> None:
        kept = res.rank >= 0  # at t = 1 a subset's colex rank is its feature index
        rows = res.inputs.unsqueeze(1).expand_as(res.rank)[kept]
        cols = res.rank[kept]
        self.score[rows, cols] = res.score[kept].to(self.score.dtype)
        self.confidence[rows, cols] = res.conf[kept].to(self.confidence.dtype)
        self.point[rows, cols] = res.point[kept]


def _prefix(res: UnitResult, k: int) -> UnitResult:
    """``res`` with its sorted top-K columns cut to ``k``."""
    return dataclasses.replace(res, conf=res.conf[:, :k].clone(), score=res.score[:, :k].clone(),
                               rank=res.rank[:, :k].clone(), point=res.point[:, :k].clone())
