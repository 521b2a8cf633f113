"""The anytime loop: levels t = 1, 2, …, shards of inputs, work units, snapshots, checkpoints.

Per level ``t`` the open inputs are split into shards (:mod:`.planning`); each shard's pass is
a set of work units run by an :class:`~.executor.Executor`, whose results merge by a total
order. When a shard's pass is complete its bounds are updated (:mod:`.update`). Only inputs
whose bounds have not met are worked on again; the state is checkpointed atomically
(:mod:`.state`) and a snapshot is yielded at the start, after every level and at least every
``report_every`` seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import torch

from ..arith import ieee_float32
from ..execution.incremental import IncrementalPrefix
from ..execution.plan import ExecutionPlan
from ..result import Result
from .certified import Certifier, CertifyMode, CertifyOptions
from .executor import Executor, InProcessExecutor, ShardTask, WorkUnit, executor_parallelism
from .hooks import ProgressHook
from .options import EvaluateOptions
from .planning import level_evaluations, plan_level
from .problem import Problem
from .sensitivity import UnitResult, empty_unit, merge_units
from .state import LevelProgress, RunState, load_checkpoint, save_checkpoint
from .subspaces import n_subsets
from .update import certify_inputs, finish_shard, record_sensitivity

__all__ = ["Engine", "drive"]


class Engine:
    """One evaluation run; build it with :func:`l0tre.api.prepare`, run it with :func:`drive`
    or iterate :meth:`run` (snapshots)."""

    def __init__(self, problem: Problem, options: EvaluateOptions, plan: ExecutionPlan, state: RunState, *,
                 checkpoint: str | os.PathLike[str] | None = None, progress: ProgressHook | None = None,
                 certify: CertifyOptions | None = None, executor: Executor | None = None) -> None:
        self.problem, self.opts, self.plan, self.state = problem, options, plan, state
        self.progress = progress or ProgressHook()
        self.executor: Executor = executor or InProcessExecutor()
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.certify = certify or CertifyOptions()
        self.certifier = None if self.certify.mode is CertifyMode.OFF else Certifier(
            problem.model, problem.space.shape, problem.space.kind.value, self.certify)
        self.fingerprint = problem.fingerprint(options.epsilon)
        self._start = time.perf_counter()

    # -- public knobs --------------------------------------------------------------------------
    @property
    def result(self) -> Result:
        """The live result (use the snapshots for copies)."""
        return self.state.result

    @property
    def n_features(self) -> int:
        """Number of features ``n`` (pixels or elements) of the inputs."""
        return self.problem.n

    @property
    def options(self) -> EvaluateOptions:
        """The validated options of this run (the time budget as last set)."""
        return self.opts

    @property
    def batch_size(self) -> int:
        """Rows per plain model call."""
        return self.plan.batch_size

    @property
    def uses_incremental(self) -> bool:
        """Whether the incremental path is available to this run (used where it pays)."""
        return self.plan.incremental is not None

    @property
    def seconds_spent(self) -> float:
        """Seconds of work already in the result (from a resumed checkpoint, else 0)."""
        return self.state.seconds_before

    def set_time_budget(self, seconds: float | None, *, from_now: bool = False) -> None:
        """Change the time budget; with ``from_now`` it counts only for the coming run (on top of
        :attr:`seconds_spent`), else it is the total including the resumed work."""
        if seconds is not None and not (isinstance(seconds, (int, float)) and seconds > 0):
            raise ValueError(f"time_budget: expected a positive number of seconds or None, got {seconds!r}")
        total = None if seconds is None else float(seconds) + (self.seconds_spent if from_now else 0.0)
        self.opts = dataclasses.replace(self.opts, time_budget=total)

    def resume(self) -> bool:
        """Load the checkpoint file if it exists (same model, inputs and options); return whether
        it did. Raises ``ValueError`` for an unreadable or foreign checkpoint."""
        loaded = load_checkpoint(self.checkpoint, self.fingerprint, self.state.result.labels)
        if loaded is not None:
            self.state = loaded.keeping(self.state.result.sensitivity)
        return loaded is not None

    def level_evaluations(self, t: int, inputs: torch.Tensor | None = None) -> int:
        """Model evaluations of the sensitivity pass of level ``t`` (exact, before pruning)."""
        return level_evaluations(self.problem, t, inputs)

    def snapshot(self, level_complete: bool, seconds: float, stopped: str = "running") -> Result:
        """Record a history entry and return a copy of the result (also given to the progress hook)."""
        snap = self.state.snapshot(level_complete, seconds, stopped)
        self.progress.snapshot(snap)
        return snap

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> Generator[Result, None, None]:
        """The anytime loop: yields snapshots. Every step between two snapshots computes in plain
        IEEE float32 (no TF32 on GPUs); the caller's settings hold while it holds a snapshot."""
        steps = self._run()
        try:
            while True:
                with ieee_float32():
                    try:
                        snap = next(steps)
                    except StopIteration:
                        return
                yield snap
        finally:
            with ieee_float32():
                steps.close()

    def _now(self) -> float:
        return self.state.seconds_before + (time.perf_counter() - self._start)

    def _checkpoint(self) -> None:
        save_checkpoint(self.checkpoint, self.fingerprint, self.state, self._now())

    def _check_budget(self, more_work: bool = True) -> None:
        if more_work and self.opts.time_budget is not None and self._now() >= self.opts.time_budget:
            raise _OutOfTime

    def _run(self) -> Generator[Result, None, None]:
        self._start = time.perf_counter()
        self._units_run = 0  # work units and shard updates finished by this run (one at least)
        stopped = "running"
        try:
            yield self.snapshot(self.state.level is None and self.result.t > 0, self._now())
            self.plan.ensure_tuned(self.problem.x0)
            t_stop = min(self.opts.t_max, self.problem.n)
            if self.certify.mode is CertifyMode.ONLY:
                yield from _certify_only(self, t_stop)
                stopped = "t_max"
            while stopped == "running":
                if self.state.level is None:
                    t, active = self.result.t + 1, self.state.open_inputs()
                    if t > t_stop or active.numel() == 0:
                        stopped = "converged" if active.numel() == 0 else "t_max"
                        break
                    self._check_budget(self._units_run > 0)  # no new level after it; one unit at least
                    rows = self.plan.rows(self.plan.chain_for(t, self.problem.x0), t)  # per call on its path
                    self.state.level = plan_level(self.problem, t, active, rows, self._now(),
                                                  executor_parallelism(self.executor))
                yield from self._level(self.state.level)
        except _OutOfTime:
            stopped = "time_budget"
        except KeyboardInterrupt:
            stopped = "interrupted"
        finally:
            if stopped != "running":
                final = self.snapshot(self.state.level is None and self.result.t > 0, self._now(), stopped)
            self._checkpoint()
        if stopped != "running":
            yield final

    def _level(self, lvl: LevelProgress) -> Generator[Result, None, None]:
        """Run (the rest of) level ``lvl.t``; snapshots while it runs and at its end. A resumed
        level continues its counts (``lvl.evaluations``, run-clock ``lvl.started``)."""
        t, p = lvl.t, self.problem
        todo = torch.tensor(sum(lvl.shards, []), dtype=torch.long)
        self.progress.level_start(t, self.level_evaluations(t, todo) + lvl.extra_evaluations, int(todo.numel()))
        if lvl.evaluations:
            self.progress.resumed(lvl.evaluations)
        chain = self.plan.chain_for(t, p.x0)
        last = time.perf_counter()
        while lvl.shard < len(lvl.shards):
            inputs, acc = _shard_inputs(lvl, self.result, self.problem)
            pending = lvl.pending(n_subsets(p.n, t)) if inputs.numel() else []
            if pending:
                results = self.executor.map(_shard_task(self, t, inputs, chain),
                                            [WorkUnit(lvl.shard, r0, r1) for r0, r1 in pending])
                with _closing(results):
                    for unit, res in results:
                        acc = merge_units(acc, _cast(res, acc.conf.dtype), p.top_k)
                        self._spend(lvl, int(res.evaluations.sum()))
                        lvl.mark_done(unit.r0, unit.r1)
                        self._units_run += 1
                        lvl.acc = _unit_state(acc)
                        self._check_budget()
                        if time.perf_counter() - last >= self.opts.report_every:
                            last = time.perf_counter()
                            yield self._saved_snapshot(False)
            if inputs.numel():
                self._finish(lvl, inputs, acc)
            lvl.next_shard()
            self._check_budget(lvl.shard < len(lvl.shards))  # after the last shard the level completes
            if time.perf_counter() - last >= self.opts.report_every and lvl.shard < len(lvl.shards):
                last = time.perf_counter()
                yield self._saved_snapshot(False)
        self.result.t = t
        self.result.level_seconds.append(self._now() - lvl.started)
        self.result.level_evaluations.append(lvl.evaluations)
        self.state.level = None
        yield self._saved_snapshot(True)

    def _saved_snapshot(self, level_complete: bool) -> Result:
        """A snapshot, then a checkpoint (which holds the snapshot's history entry)."""
        snap = self.snapshot(level_complete, self._now())
        self._checkpoint()
        return snap

    def _spend(self, lvl: LevelProgress, evaluations: int, *, extra: bool = False) -> None:
        """Count model evaluations to the run and the level (``extra``: beyond the planned pass,
        shown on the progress bar as they are spent; the pass's rows arrive per model call)."""
        self.result.evaluations += evaluations
        lvl.spent(evaluations, extra=extra)
        if extra:
            self.progress.extra(evaluations)

    def _finish(self, lvl: LevelProgress, inputs: torch.Tensor, acc: UnitResult) -> None:
        """Bound updates of a shard whose pass is complete (see :mod:`.update`)."""
        t = lvl.t
        if t == 1:
            record_sensitivity(self.problem, self.result, inputs, acc)
        chain = self.plan.chain_for(1, self.problem.x0)
        spent = finish_shard(self.problem, self.result, self.state.blocked, t, inputs, acc,
                             batch_size=self.plan.batch_size, tighten_rows=self.plan.rows(chain), chain=chain,
                             executor=self.executor, shard=lvl.shard)
        self._spend(lvl, spent, extra=True)
        self._units_run += 1  # a shard's bound updates are work too
        certify_inputs(self.certifier, self.problem, self.result, t, inputs)


def _shard_task(engine: Engine, t: int, inputs: torch.Tensor, chain: IncrementalPrefix | None) -> ShardTask:
    """What every work unit of the shard of ``inputs`` at level ``t`` needs."""
    p, plan, dev = engine.problem, engine.plan, inputs.to(engine.problem.x0.device)
    return ShardTask(model=p.model, objective=p.objective, x0=p.x0[dev], ref=p.ref[dev], valid=p.valid[dev],
                     inputs=inputs, ctx=p.context(t), batch_size=plan.rows(chain, t), k=p.top_k, incremental=chain,
                     pair_recipe=plan.pair_recipe(t, chain, p.palette), on_batch=engine.progress.advance)


def _shard_inputs(lvl: LevelProgress, r: Result, problem: Problem) -> tuple[torch.Tensor, UnitResult]:
    """The inputs of the current shard of ``lvl`` still open, and their merged unit results so far."""
    if lvl.acc is not None:
        acc = UnitResult(**lvl.acc)
        return acc.inputs, acc
    shard = torch.tensor(lvl.shards[lvl.shard], dtype=torch.long)
    shard = shard[r.lower[shard] < r.upper[shard]]
    return shard, empty_unit(shard, problem.top_k, problem.acc_dtype)


def _certify_only(engine: Engine, t_stop: int) -> Generator[Result, None, None]:
    """Certified lower bounds only: no grid pass, no upper-bound search (``upper`` stays ``n``
    unless known). ``lower`` is the certified bound (a certificate implies the grid bound)."""
    r, p = engine.result, engine.problem
    if r.certified_lower is None or engine.certifier is None:
        return
    done = torch.zeros_like(r.lower, dtype=torch.bool)
    for t in range(r.t + 1, t_stop + 1):
        open_ = ((r.certified_lower == t - 1) & ~done).nonzero().squeeze(1)
        if open_.numel() == 0:
            break
        engine.progress.level_start(t, 0, int(open_.numel()))
        level_start = engine._now()
        for i in open_.tolist():
            if engine.certifier.level(p.x0[i], int(p.ref[i]), t):
                r.certified_lower[i] = t
                r.lower[i] = max(int(r.lower[i]), t)
            else:
                done[i] = True
            engine._check_budget()
        r.t = t
        r.level_seconds.append(engine._now() - level_start)
        r.level_evaluations.append(0)
        yield engine._saved_snapshot(True)


def drive(
    engine: Engine,
    on_snapshot: Callable[[Result], None] | None = None,
    *,
    guard: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
) -> Result:
    """Run ``engine`` to its end, calling ``on_snapshot`` on every snapshot; return the last.

    The one run loop of the API and the CLI. A ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM turned
    into one by the CLI) stops the run: when it lands inside the engine, the engine yields a final
    ``"interrupted"`` snapshot itself; when it lands in ``on_snapshot``, it is thrown into the
    engine to get that snapshot, which is then handed to ``on_snapshot`` again inside ``guard()``
    (the CLI ignores further signals there, so the final write is not torn).
    """
    gen = engine.run()
    last: Result | None = None
    try:
        for snap in gen:
            last = snap
            if on_snapshot is not None:
                on_snapshot(snap)
    except KeyboardInterrupt:
        if last is None or last.stopped == "running":
            final: Result | None = None
            try:
                final = gen.throw(KeyboardInterrupt())
            except (StopIteration, KeyboardInterrupt):
                final = None
            finally:
                gen.close()
            if final is None:
                final = last if last is not None else engine.snapshot(False, 0.0, "interrupted")
            final.stopped = "interrupted"
            last = final
        # else: interrupted while handling the final snapshot; hand it over again, undisturbed
        if on_snapshot is not None:
            with guard():
                on_snapshot(last)
    except Exception:
        # e.g. an output write failed: stop the run now (its final checkpoint is written here,
        # not at garbage collection); a second failure there must not hide the first
        with contextlib.suppress(Exception):
            gen.close()
        raise
    if last is None:  # the engine yields at least once; kept for safety
        last = engine.snapshot(False, 0.0, "interrupted")
    return last


@contextlib.contextmanager
def _closing(results: Iterator[tuple[WorkUnit, UnitResult]]) -> Iterator[None]:
    """Close ``results`` on exit when it is a generator (stops its outstanding units)."""
    try:
        yield
    finally:
        if isinstance(results, Generator):
            results.close()


class _OutOfTime(Exception):
    """Internal: the time budget is spent."""


def _unit_state(u: UnitResult) -> dict[str, torch.Tensor]:
    return {f.name: getattr(u, f.name) for f in dataclasses.fields(u)}


def _cast(u: UnitResult, dtype: torch.dtype) -> UnitResult:
    if u.conf.dtype == dtype:
        return u
    return dataclasses.replace(u, conf=u.conf.to(dtype), score=u.score.to(dtype), w_score=u.w_score.to(dtype))
