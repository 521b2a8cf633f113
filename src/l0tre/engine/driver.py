"""The anytime driver: levels t = 1, 2, …, input shards, work units, snapshots, checkpoints.

Per level ``t`` the unconverged inputs are split into *shards*; each shard is evaluated as a
sequence of *work units* (subset-rank ranges, :mod:`.sensitivity`), whose results merge by a
total order. When a shard's sensitivity pass is complete its lower bounds are final for the
level, then its upper bounds are searched (:mod:`.upper`) and tightened (:mod:`.tighten`).
Every adversarial example is re-checked on the model before it changes a bound.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import time
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..classifier import Classifier, ieee_float32
from ..execution.incremental import IncrementalPrefix
from ..execution.memory import plan_batch_size
from ..execution.modes import incremental_pays
from ..execution.pairs import PairTable
from ..objectives import Misclassification, Objective
from ..result import Result, atomic_torch_save
from .certified import Certifier, CertifyMode, CertifyOptions
from .features import FeatureKind, FeatureSpace
from .grid import colours, grid_values, valid_colours
from .options import EvaluateOptions
from .sensitivity import LevelContext, UnitResult, empty_unit, evaluate_unit, merge_units
from .subspaces import binomial_table, count_points, n_subsets, unrank
from .tighten import tighten
from .upper import accumulate

__all__ = ["Engine", "ProgressHook", "drive"]

CHECKPOINT_FORMAT = "l0tre.checkpoint/1"
SHARD_INPUTS = 4  # measured: 8 gives the same speed with half as many snapshots
SHARD_POINTS_MAX = 1 << 16  # points per shard beyond which a shard is never grown for batching


class ProgressHook:
    """Receives progress events (the CLI / tqdm bar implements this); all methods optional."""

    def level_start(self, t: int, evaluations: int, inputs: int) -> None: ...

    def advance(self, evaluations: int) -> None: ...

    def snapshot(self, result: Result) -> None: ...

    def close(self) -> None: ...


@dataclass
class _LevelProgress:
    """Where a level stands (checkpointed)."""

    t: int
    shards: list[list[int]]
    unit_subsets: list[int]  # subsets per unit, per shard
    shard: int = 0
    next_rank: int = 0
    acc: dict[str, torch.Tensor] | None = None
    started: float = 0.0  # seconds (run clock) when the level started
    extra: dict[str, Any] = field(default_factory=dict)


class Engine:
    """One evaluation run (state + the loop). Use :func:`l0tre.evaluate_iter` instead."""

    def __init__(
        self,
        model: Classifier,
        x: torch.Tensor,
        options: EvaluateOptions,
        *,
        labels: torch.Tensor | None,
        batch_size: int,
        checkpoint: str | os.PathLike[str] | None,
        objective: Objective | None = None,
        progress: ProgressHook | None = None,
        incremental: bool = True,
        force_incremental: bool = False,
        certify: CertifyOptions | None = None,
        tuner: Callable[[], int] | None = None,
    ) -> None:
        self.model = model
        self.opts = options
        self.objective: Objective = objective or Misclassification()
        self.progress = progress or ProgressHook()
        self.x0 = x.to(device=model.device, dtype=model.dtype)
        self.x_orig = x.detach().to("cpu")
        self.space = FeatureSpace(options.features, tuple(x.shape[1:]))  # type: ignore[arg-type]
        self.batch_size = batch_size
        # execution-mode / batch-size measuring, deferred until after the first snapshot
        self._tuner = tuner
        # rows per call on the incremental path (cheaper rows: larger calls amortise the per-call
        # work; the chain splits them into cache-sized chunks itself); a user batch size is kept
        self.inc_batch = batch_size if options.batch_size is not None else min(
            plan_batch_size(model, tuple(x.shape[1:]), None, options.max_memory), max(batch_size, 512))
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.n = self.space.n
        self.top_k = options.top_k or max(self.n, 1024)
        self.acc_dtype = torch.float64 if model.dtype == torch.float64 else torch.float32
        grid = grid_values(options.steps, model.bounds, dtype=model.dtype)
        self.palette = colours(grid, self.space.channels).to(model.device)
        self.valid = valid_colours(self.space.values(self.x0), self.palette)  # (N, n, P1)
        self.valid_counts = self.valid.sum(2).cpu()
        n_in = x.shape[0]
        ref = self._reference()
        self.ref = ref.to(model.device)
        self.result = Result(
            lower=torch.zeros(n_in, dtype=torch.int64),
            upper=torch.full((n_in,), self.n, dtype=torch.int64),
            found=torch.zeros(n_in, dtype=torch.bool),
            adversarial=x.detach().to("cpu").clone(),
            adversarial_label=torch.full((n_in,), -1, dtype=torch.int64),
            predicted=ref.cpu(),
            labels=labels,
            n_features=self.n,
            epsilon=options.epsilon,
            features=options.features.value,
        )
        self.blocked = torch.zeros(n_in, dtype=torch.bool)  # a grid flip seen but not re-verified
        self.level: _LevelProgress | None = None
        self.elapsed_before = 0.0
        self.fingerprint = self._fingerprint(x)
        self.tables: dict[int, torch.Tensor] = {}
        self.certify = certify or CertifyOptions()
        self.certifier: Certifier | None = None
        if self.certify.mode is not CertifyMode.OFF:
            self.certifier = Certifier(model, self.space.shape, options.features.value, self.certify)
            self.result.certified_lower = torch.zeros(n_in, dtype=torch.int64)
        self.incremental = IncrementalPrefix.build(model, self.space.shape) if incremental else None
        self._chains: dict[int, IncrementalPrefix | None] = {1: self.incremental}  # per level t
        self.use_pairs = True  # level 2 from the level-1 table where pixel windows never meet (.pairs)
        self.force_incremental = force_incremental
        self._inc_levels: dict[int, tuple[bool, int]] = {}  # t -> (pays, chunk)
        # whether the chain pays is measured lazily, at the start of each level (after the first
        # snapshot), and remembered on disk (see tuning_cache)

    # -- public knobs -------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        """Number of features ``n`` (pixels or elements) of the inputs."""
        return self.n

    @property
    def options(self) -> EvaluateOptions:
        """The validated options of this run (the time budget as last set)."""
        return self.opts

    @property
    def uses_incremental(self) -> bool:
        """Whether the incremental path is available to this run (used where it pays)."""
        return self.incremental is not None

    @property
    def seconds_spent(self) -> float:
        """Seconds of work already in the result (from a resumed checkpoint, else 0)."""
        return self.elapsed_before

    def set_time_budget(self, seconds: float | None, *, from_now: bool = False) -> None:
        """Change the time budget; with ``from_now`` it counts only for the coming run (on top of
        :attr:`seconds_spent`), else it is the total including the resumed work."""
        if seconds is not None and not (isinstance(seconds, (int, float)) and seconds > 0):
            raise ValueError(f"time_budget: expected a positive number of seconds or None, got {seconds!r}")
        total = None if seconds is None else float(seconds) + (self.elapsed_before if from_now else 0.0)
        self.opts = dataclasses.replace(self.opts, time_budget=total)

    # -- helpers ------------------------------------------------------------------------------
    def _ensure_tuned(self) -> None:
        """Run the deferred tuner once: it sets the model's execution mode and returns the rows
        per model call."""
        if self._tuner is None:
            return
        tuner, self._tuner = self._tuner, None
        self.batch_size = tuner()
        if self.opts.batch_size is None:
            self.inc_batch = min(plan_batch_size(self.model, self.space.shape, None, self.opts.max_memory),
                                 max(self.batch_size, 512))
        else:
            self.inc_batch = self.batch_size

    def _incremental_for(self, t: int) -> IncrementalPrefix | None:
        """The incremental chain when it is on and pays at level ``t`` (measured once per level)."""
        if self.incremental is None or t > MAX_INCREMENTAL_T:
            return None
        if t not in self._chains:  # t windows per row: a shallower chain may pay more
            self._chains[t] = IncrementalPrefix.build(self.model, self.space.shape, windows=t)
        inc = self._chains[t]
        if inc is None:
            return None
        if self.force_incremental:
            return inc
        if t > 1 and not self._inc_levels.get(1, (True, 0))[0]:
            return None  # it did not pay at t=1: it will not with more windows
        if t not in self._inc_levels:
            probe = self.x0[: min(8, self.x0.shape[0])]
            pays = incremental_pays(self.model, inc, probe, self.inc_batch, t)
            self._inc_levels[t] = (pays, inc.chunk)
        pays, inc.chunk = self._inc_levels[t]
        return inc if pays else None

    def _pair_tables(self, t: int, inc: IncrementalPrefix | None, idx: torch.Tensor) -> list[PairTable]:
        """Level-2 pair tables for the inputs ``idx`` at the last two convolutions of the t = 1
        chain (when the chain is in use at t = 2), deepest first."""
        if t != 2 or inc is None or not self.use_pairs or self.incremental is None or idx.numel() == 0:
            return []
        if self.space.kind is not FeatureKind.PIXEL:
            return []
        tables = [PairTable.build(self.incremental, self.x0[idx], self.palette, conv=conv,
                                  max_bytes=self.opts.max_memory // 8) for conv in (-1, -2)]
        return [tab for tab in tables if tab is not None]

    def _reference(self) -> torch.Tensor:
        parts = [
            self.objective.reference(self.model, self.x0[i : i + self.batch_size])
            for i in range(0, self.x0.shape[0], self.batch_size)
        ]
        return torch.cat(parts).to(torch.int64)

    def _fingerprint(self, x: torch.Tensor) -> str:
        h = hashlib.sha256()
        h.update(self.model.fingerprint().encode())
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
        h.update(repr((self.opts.epsilon, self.opts.features.value, self.model.bounds,
                       self.objective.name, self.top_k)).encode())
        return h.hexdigest()

    def level_evaluations(self, t: int, inputs: torch.Tensor | None = None) -> int:
        """Model evaluations of the sensitivity pass of level ``t`` (exact, before pruning)."""
        counts = self.valid_counts if inputs is None else self.valid_counts[inputs]
        return int(count_points(counts, t).sum().item())

    def _now(self, start: float) -> float:
        return self.elapsed_before + (time.perf_counter() - start)

    def _table(self, t: int) -> torch.Tensor:
        if t not in self.tables:
            self.tables[t] = binomial_table(self.n, t)
        return self.tables[t]

    def snapshot(self, level_complete: bool, seconds: float, stopped: str = "running") -> Result:
        r = self.result
        r.seconds = seconds
        r.level_complete = level_complete
        r.stopped = stopped
        r.history.append({
            "t": float(r.t), "seconds": seconds, "evaluations": float(r.evaluations),
            "lower": r.global_lower, "upper": r.global_upper, "level_complete": float(level_complete),
        })
        snap = r.copy()
        self.progress.snapshot(snap)
        return snap

    # -- checkpoint ---------------------------------------------------------------------------
    def save_checkpoint(self, seconds: float) -> None:
        if self.checkpoint is None:
            return
        lvl = None
        if self.level is not None:
            lvl = asdict(self.level)
        atomic_torch_save({
            "format": CHECKPOINT_FORMAT,
            "fingerprint": self.fingerprint,
            "result": self.result.state(),
            "blocked": self.blocked,
            "level": lvl,
            "seconds": seconds,
        }, self.checkpoint)

    def load_checkpoint(self) -> bool:
        """Restore state from the checkpoint file if it exists; return whether it did."""
        if self.checkpoint is None or not self.checkpoint.exists():
            return False
        try:
            data = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"checkpoint: {str(self.checkpoint)!r} is not readable ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint: {str(self.checkpoint)!r} is not an l0tre checkpoint")
        if data["fingerprint"] != self.fingerprint:
            raise ValueError(
                f"checkpoint: {str(self.checkpoint)!r} was written for another model, inputs or "
                "options (epsilon, features, bounds); delete it or choose another checkpoint path"
            )
        state = data["result"]
        labels = self.result.labels
        self.result = Result(**state)
        if labels is not None:
            self.result.labels = labels
        self.blocked = data["blocked"]
        self.elapsed_before = float(data["seconds"])
        lvl = data["level"]
        self.level = _LevelProgress(**lvl) if lvl is not None else None
        return True

    # -- bounds updates -----------------------------------------------------------------------
    def _accept(self, idx: torch.Tensor, x_cand: torch.Tensor) -> None:
        """Re-check candidate examples ``x_cand`` ``(A, C, H, W)`` for inputs ``idx`` and keep
        those that are adversarial and shorter than the current best."""
        if idx.numel() == 0:
            return
        ok_all, labels_all = [], []
        for i in range(0, idx.numel(), self.batch_size):
            ov = self.objective.evaluate(self.model, x_cand[i : i + self.batch_size],
                                         self.ref[idx[i : i + self.batch_size].to(self.ref.device)])
            ok_all.append(ov.success.cpu())
            labels_all.append(ov.label.cpu())
        self.result.evaluations += int(idx.numel())
        ok = torch.cat(ok_all)
        adv_labels = torch.cat(labels_all)
        x0 = self.x0[idx.to(self.x0.device)]
        dist = self.space.l0(x_cand, x0).cpu()
        r = self.result
        better = ok & (dist - 1 < r.upper[idx]) & (dist >= 1)
        sel = idx[better]
        r.upper[sel] = dist[better] - 1
        r.found[sel] = True
        # store in the caller's dtype: unchanged features keep their exact original values
        keep = better.to(x_cand.device)
        changed = self.space.changed(x_cand[keep], x0[keep]).cpu()
        stored = self.space.values(self.x_orig[sel].clone())
        stored[changed] = self.space.values(x_cand[keep].to("cpu", stored.dtype))[changed]
        r.adversarial[sel] = self.space.images(stored)
        r.adversarial_label[sel] = adv_labels[better]

    def _finish_shard(self, t: int, inputs: torch.Tensor, acc: UnitResult) -> None:
        """Lower bounds, upper bounds and tightening for a shard whose level-t pass is complete."""
        r = self.result
        has_w = acc.w_rank >= 0
        # inputs with a grid flip at distance t: build and verify the witness
        if bool(has_w.any()):
            wi = inputs[has_w]
            subs = unrank(acc.w_rank[has_w], self.n, t, self._table(t)).to(self.x0.device)
            ctx = LevelContext.build(self.space, self.palette, t, self._table(t))
            xw = self.x0[wi.to(self.x0.device)].clone()
            self.space.scatter(xw, subs, ctx.values(acc.w_point[has_w].to(self.x0.device)))
            self._accept(wi, xw)
            unverified = wi[r.upper[wi] != t - 1]
            self.blocked[unverified] = True
        clean = inputs[~has_w]
        r.lower[clean] = torch.maximum(r.lower[clean], torch.full_like(r.lower[clean], t)).clamp_max(
            r.upper[clean]
        )
        # upper bounds for the still-open inputs of the shard
        open_mask = (r.lower[inputs] < r.upper[inputs]) & ~has_w
        if not bool(open_mask.any()):
            return
        rows = open_mask.nonzero().squeeze(1)
        oi = inputs[rows]
        dev = self.x0.device
        rank = acc.rank[rows]
        present = rank >= 0
        feats = unrank(rank.clamp_min(0).reshape(-1), self.n, t, self._table(t)).view(*rank.shape, t)
        ctx = LevelContext.build(self.space, self.palette, t, self._table(t))
        vals = ctx.values(acc.point[rows].clamp_min(0).reshape(-1).to(dev)).view(*rank.shape, t, -1)
        x0 = self.x0[oi.to(dev)]
        ref = self.ref[oi.to(dev)]
        found, x_adv, ev = accumulate(
            self.model, self.objective, self.space, x0, ref, feats.to(dev), vals, present.to(dev),
            batch_size=self.batch_size,
        )
        r.evaluations += ev
        self.progress.advance(ev)
        if bool(found.any()):
            fi = found.nonzero().squeeze(1)
            inc = self._incremental_for(1)
            x_t, ev2 = tighten(self.model, self.objective, self.space, x0[fi], ref[fi], x_adv[fi],
                               batch_size=self.batch_size if inc is None else self.inc_batch, incremental=inc)
            r.evaluations += ev2
            self.progress.advance(ev2)
            self._accept(oi[fi.cpu()], x_t)

    def _certify_inputs(self, t: int, inputs: torch.Tensor) -> None:
        """Try to certify level ``t`` for inputs whose grid pass at ``t`` was clean and whose
        level ``t − 1`` is certified."""
        r = self.result
        if self.certifier is None or r.certified_lower is None:
            return
        for i in inputs.tolist():
            if r.certified_lower[i] == t - 1 and r.lower[i] >= t:
                if self.certifier.level(self.x0[i], int(self.ref[i]), t):
                    r.certified_lower[i] = t

    def _run_certify_only(self, start: float, t_stop: int) -> Generator[Result, None, None]:
        """Certified lower bounds only: no grid pass, no upper-bound search (``upper`` stays ``n``
        unless known). ``lower`` is the certified bound (a certificate implies the grid bound)."""
        r = self.result
        if r.certified_lower is None:
            return
        done = torch.zeros_like(r.lower, dtype=torch.bool)
        for t in range(r.t + 1, t_stop + 1):
            open_ = ((r.certified_lower == t - 1) & ~done).nonzero().squeeze(1)
            if open_.numel() == 0:
                break
            self.progress.level_start(t, 0, int(open_.numel()))
            level_start = self._now(start)
            for i in open_.tolist():
                ok = self.certifier.level(self.x0[i], int(self.ref[i]), t) if self.certifier else False
                if ok:
                    r.certified_lower[i] = t
                    r.lower[i] = max(int(r.lower[i]), t)
                else:
                    done[i] = True
                if self.opts.time_budget is not None and self._now(start) >= self.opts.time_budget:
                    raise _OutOfTime
            r.t = t
            r.level_seconds.append(self._now(start) - level_start)
            self.save_checkpoint(self._now(start))
            yield self.snapshot(True, self._now(start))

    # -- planning -----------------------------------------------------------------------------
    def _plan_level(self, t: int, active: torch.Tensor, start: float) -> _LevelProgress:
        per_input = count_points(self.valid_counts[active], t).clamp_min(1)
        # a shard closes at ``target`` points, but holds ``SHARD_INPUTS`` inputs where they are
        # cheap: its upper-bound search and tightening then batch over several inputs
        target = max(16 * self.batch_size, SHARD_INPUTS * int(per_input.float().median()))
        target = min(target, SHARD_POINTS_MAX)
        shards: list[list[int]] = []
        cur: list[int] = []
        cur_cost = 0.0
        max_shard = max(1, min(256, (64 << 20) // (24 * self.top_k)))
        for i, c in zip(active.tolist(), per_input.tolist(), strict=True):
            if cur and (cur_cost + c > target or len(cur) >= max_shard):
                shards.append(cur)
                cur, cur_cost = [], 0.0
            cur.append(i)
            cur_cost += c
        if cur:
            shards.append(cur)
        p1 = self.palette.shape[0]
        cand_limit = 16 * self.batch_size
        unit = [max(1, cand_limit // (len(s) * p1**t)) for s in shards]
        return _LevelProgress(t=t, shards=shards, unit_subsets=unit, started=self._now(start))

    def open_inputs(self) -> torch.Tensor:
        r = self.result
        return ((r.lower < r.upper) & ~self.blocked).nonzero().squeeze(1)

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> Generator[Result, None, None]:
        """The anytime loop: yields snapshots. Every step between two snapshots computes in plain
        IEEE float32 (:func:`~l0tre.classifier.ieee_float32`: no TF32 on GPUs); the caller's
        settings hold while a snapshot is being consumed."""
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

    def _run(self) -> Generator[Result, None, None]:
        start = time.perf_counter()
        budget = self.opts.time_budget
        last_report = time.perf_counter()
        stopped = "running"
        try:
            yield self.snapshot(self.result.t > 0, self._now(start))
            self._ensure_tuned()
            t_stop = min(self.opts.t_max, self.n)
            if self.certify.mode is CertifyMode.ONLY:
                yield from self._run_certify_only(start, t_stop)
                stopped = "t_max"
            while stopped == "running":
                if self.level is None:
                    t = self.result.t + 1
                    if t > t_stop:
                        stopped = "t_max" if len(self.open_inputs()) else "converged"
                        break
                    active = self.open_inputs()
                    if active.numel() == 0:
                        stopped = "converged"
                        break
                    self.level = self._plan_level(t, active, start)
                lvl = self.level
                t = lvl.t
                self.progress.level_start(
                    t, self.level_evaluations(t, torch.tensor(sum(lvl.shards, []), dtype=torch.long)),
                    sum(len(s) for s in lvl.shards),
                )
                ctx = LevelContext.build(self.space, self.palette, t, self._table(t))
                inc = self._incremental_for(t)
                total_subsets = n_subsets(self.n, t)
                while lvl.shard < len(lvl.shards):
                    shard = torch.tensor(lvl.shards[lvl.shard], dtype=torch.long)
                    shard = shard[(self.result.lower[shard] < self.result.upper[shard])]
                    acc = (UnitResult(**lvl.acc) if lvl.acc is not None
                           else empty_unit(shard, self.top_k, self.acc_dtype))
                    if lvl.acc is not None:
                        shard = acc.inputs
                    dev_idx = shard.to(self.x0.device)
                    step = lvl.unit_subsets[lvl.shard]
                    pairs = self._pair_tables(t, inc, dev_idx) if lvl.next_rank < total_subsets else []
                    while lvl.next_rank < total_subsets and shard.numel() > 0:
                        r1 = min(total_subsets, lvl.next_rank + step)
                        unit = evaluate_unit(
                            self.model, self.objective, self.x0[dev_idx], self.ref[dev_idx],
                            self.valid[dev_idx], shard, ctx, lvl.next_rank, r1,
                            batch_size=self.batch_size if inc is None else self.inc_batch, k=self.top_k,
                            on_batch=self.progress.advance, incremental=inc, pairs=pairs,
                        )
                        acc = merge_units(acc, _cast(unit, acc.conf.dtype), self.top_k)
                        self.result.evaluations += int(unit.evaluations.sum())  # counted as they happen
                        lvl.next_rank = r1
                        lvl.acc = _unit_state(acc)
                        if budget is not None and self._now(start) >= budget:
                            raise _OutOfTime
                        if time.perf_counter() - last_report >= self.opts.report_every:
                            last_report = time.perf_counter()
                            self.save_checkpoint(self._now(start))
                            yield self.snapshot(False, self._now(start))
                    if shard.numel() > 0:
                        self._finish_shard(t, shard, acc)
                        self._certify_inputs(t, shard)
                    lvl.shard += 1
                    lvl.next_rank = 0
                    lvl.acc = None
                    if budget is not None and self._now(start) >= budget:
                        raise _OutOfTime
                    if time.perf_counter() - last_report >= self.opts.report_every and lvl.shard < len(lvl.shards):
                        last_report = time.perf_counter()
                        self.save_checkpoint(self._now(start))
                        yield self.snapshot(False, self._now(start))
                self.result.t = t
                self.result.level_seconds.append(self._now(start) - lvl.started)
                self.level = None
                last_report = time.perf_counter()
                self.save_checkpoint(self._now(start))
                yield self.snapshot(True, self._now(start))
        except _OutOfTime:
            stopped = "time_budget"
        except KeyboardInterrupt:
            stopped = "interrupted"
        finally:
            seconds = self._now(start)
            self.save_checkpoint(seconds)
            if stopped != "running":
                self.final = self.snapshot(self.level is None and self.result.t > 0, seconds, stopped)
        if stopped != "running":
            yield self.final


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
    if last is None:  # the engine yields at least once; kept for safety
        last = engine.snapshot(False, 0.0, "interrupted")
    return last


#: the incremental chain recomputes one window per changed pixel; beyond this many the plain
#: forward pass is used
MAX_INCREMENTAL_T = 4


class _OutOfTime(Exception):
    """Internal: the time budget is spent."""


def _unit_state(u: UnitResult) -> dict[str, torch.Tensor]:
    return {k: getattr(u, k) for k in ("inputs", "conf", "score", "rank", "point",
                                        "w_score", "w_rank", "w_point", "evaluations")}


def _cast(u: UnitResult, dtype: torch.dtype) -> UnitResult:
    if u.conf.dtype == dtype:
        return u
    return UnitResult(**{**_unit_state(u), "conf": u.conf.to(dtype), "score": u.score.to(dtype),
                         "w_score": u.w_score.to(dtype)})


def estimate_guard(engine: Engine, t_max: int, limit: int) -> None:
    """Refuse a run whose sensitivity passes would exceed ``limit`` model evaluations."""
    for t in range(1, min(t_max, engine.n) + 1):
        need = engine.level_evaluations(t)
        if need > limit:
            n_in = engine.x0.shape[0]
            raise ValueError(
                f"max_evaluations: level t={t} needs about {need:,} model evaluations "
                f"({n_in} inputs, n={engine.n} features, C(n,{t})={math.comb(engine.n, t):,} subsets), "
                f"above max_evaluations={limit:,}; lower t_max, use a coarser epsilon, "
                "fewer inputs, or raise max_evaluations"
            )
