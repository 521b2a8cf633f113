"""Planning a level: which inputs go together into a shard, and how big a work unit is.

A shard is a group of inputs whose level-``t`` pass runs as a sequence of work units (ranges
of subset ranks); its upper-bound search and tightening then batch over all its inputs.
"""

from __future__ import annotations

import math

import torch

from .problem import Problem
from .state import LevelProgress
from .subspaces import count_points, n_subsets

__all__ = ["PARALLEL_SHARD_INPUTS", "SHARD_INPUTS", "SHARD_POINTS_MAX", "UNITS_PER_WORKER", "estimate_guard",
           "level_evaluations", "plan_level"]

SHARD_INPUTS = 4  # measured: 8 gives the same speed with half as many snapshots
SHARD_POINTS_MAX = 1 << 16  # points per shard beyond which a shard is not grown for batching, unless
# 16 model calls hold more (large calls on a GPU): then shards grow to 16 calls, so that the
# upper-bound search and tightening batch over many inputs per call
UNITS_PER_WORKER = 4  # with a parallel executor, a shard has at least this many units per worker
PARALLEL_SHARD_INPUTS = 32  # with a parallel executor, cheap inputs per shard per worker: the search
# after a shard's pass runs on the workers too, and is balanced only over many inputs (one input's
# tightening can cost as much as the rest of its shard); measured in docs/benchmarks.md E10


def level_evaluations(problem: Problem, t: int, inputs: torch.Tensor | None = None) -> int:
    """Model evaluations of the sensitivity pass of level ``t`` (exact, before pruning)."""
    counts = problem.valid_counts if inputs is None else problem.valid_counts[inputs]
    return int(count_points(counts, t).sum().item())


def plan_level(problem: Problem, t: int, active: torch.Tensor, batch_size: int, started: float,
               parallelism: int = 1) -> LevelProgress:
    """Shards and unit sizes for level ``t`` over the inputs ``active`` ``(M,)``.

    A shard closes at ``target`` points, but holds ``SHARD_INPUTS`` inputs where they are cheap
    (``PARALLEL_SHARD_INPUTS × parallelism`` with a parallel executor, up to ``SHARD_POINTS_MAX``);
    a unit holds about ``16 × batch_size`` candidate rows, and is smaller where that leaves fewer
    than ``UNITS_PER_WORKER × parallelism`` units in a shard (an executor running units at the same
    time: see :func:`~.executor.executor_parallelism`). Unit sizes never change a result.
    """
    per_input = count_points(problem.valid_counts[active], t).clamp_min(1)
    per_shard = SHARD_INPUTS if parallelism <= 1 else PARALLEL_SHARD_INPUTS * parallelism
    target = max(16 * batch_size, per_shard * int(per_input.float().median()))
    target = min(target, max(SHARD_POINTS_MAX, 16 * batch_size))  # large calls (GPU): larger shards
    shards: list[list[int]] = []
    cur: list[int] = []
    cur_cost = 0.0
    max_shard = max(1, min(256, (64 << 20) // (24 * problem.top_k)))
    for i, c in zip(active.tolist(), per_input.tolist(), strict=True):
        if cur and (cur_cost + c > target or len(cur) >= max_shard):
            shards.append(cur)
            cur, cur_cost = [], 0.0
        cur.append(i)
        cur_cost += c
    if cur:
        shards.append(cur)
    p1 = problem.palette.shape[0]
    cand_limit = 16 * batch_size
    unit = [max(1, cand_limit // (len(s) * p1**t)) for s in shards]
    if parallelism > 1:
        cap = max(1, -(-n_subsets(problem.n, t) // (UNITS_PER_WORKER * parallelism)))
        unit = [min(u, cap) for u in unit]
    return LevelProgress(t=t, shards=shards, unit_subsets=unit, started=started)


def estimate_guard(problem: Problem, t_max: int, limit: int) -> None:
    """Refuse a run whose sensitivity passes would exceed ``limit`` model evaluations.

    Raises:
        ValueError: naming ``max_evaluations``, the level and the count.
    """
    for t in range(1, min(t_max, problem.n) + 1):
        need = level_evaluations(problem, t)
        if need > limit:
            raise ValueError(
                f"max_evaluations: level t={t} needs about {need:,} model evaluations "
                f"({problem.size} inputs, n={problem.n} features, C(n,{t})={math.comb(problem.n, t):,} subsets), "
                f"above max_evaluations={limit:,}; lower t_max, use a coarser epsilon, "
                "fewer inputs, or raise max_evaluations"
            )
