"""The state of a run and its checkpoint: what a resumed run needs to continue exactly.

A checkpoint is written atomically (temp file + rename) and holds the result so far, the
inputs whose grid flip could not be re-verified, the progress inside the current level and the
seconds already spent. It is resumed only for the same model, inputs and options (fingerprint).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..result import Result, atomic_torch_save
from .features import FeatureKind
from .problem import Problem

__all__ = ["CHECKPOINT_FORMAT", "LevelProgress", "RunState", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "l0tre.checkpoint/1"


@dataclass
class LevelProgress:
    """Where a level stands.

    Attributes:
        t: the level.
        shards: the inputs of each shard (global indices).
        unit_subsets: subsets per work unit, per shard.
        shard: the shard being worked on.
        next_rank: in that shard, every unit below this subset rank is merged into ``acc``.
        acc: the merged unit results of the shard so far (:class:`~.sensitivity.UnitResult`
            fields), or ``None``.
        started: run-clock seconds when the level started.
        extra: free-form additions (kept for format compatibility).
        done: ``[r0, r1)`` of units above ``next_rank`` already merged (units may finish in
            any order on an executor).
        evaluations: model evaluations spent in this level so far (merged units, and the
            upper-bound search and tightening of finished shards), over interrupted runs.
        extra_evaluations: the part of ``evaluations`` beyond the planned sensitivity pass
            (upper-bound search, tightening, re-checks).

    Fields added after the first checkpoint format have defaults: older checkpoints load.
    """

    t: int
    shards: list[list[int]]
    unit_subsets: list[int]
    shard: int = 0
    next_rank: int = 0
    acc: dict[str, torch.Tensor] | None = None
    started: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    done: list[list[int]] = field(default_factory=list)
    evaluations: int = 0
    extra_evaluations: int = 0

    def spent(self, evaluations: int, *, extra: bool = False) -> None:
        """Count ``evaluations`` model evaluations to this level (``extra``: beyond the pass)."""
        self.evaluations += evaluations
        if extra:
            self.extra_evaluations += evaluations

    def mark_done(self, r0: int, r1: int) -> None:
        """Record the unit ``[r0, r1)`` as merged; ``next_rank`` moves over finished units."""
        self.done.append([r0, r1])
        self.done.sort()
        while self.done and self.done[0][0] == self.next_rank:
            self.next_rank = self.done.pop(0)[1]

    def pending(self, total: int) -> list[tuple[int, int]]:
        """The rank ranges ``[r0, r1)`` of the current shard still to evaluate."""
        step = self.unit_subsets[self.shard]
        finished = {r0 for r0, _ in self.done}
        return [(r0, min(total, r0 + step)) for r0 in range(self.next_rank, total, step) if r0 not in finished]

    def next_shard(self) -> None:
        """Move on to the next shard."""
        self.shard += 1
        self.next_rank = 0
        self.acc = None
        self.done = []


@dataclass
class RunState:
    """The mutable state of a run (everything a checkpoint holds)."""

    result: Result
    blocked: torch.Tensor  # (N,) bool: a grid flip seen that did not re-verify
    level: LevelProgress | None = None
    seconds_before: float = 0.0  # seconds of work in the state when it was loaded

    @staticmethod
    def fresh(problem: Problem, labels: torch.Tensor | None, epsilon: float, *, certified: bool,
              keep_sensitivity: bool, pixels: str = "all", precision: str = "float32") -> RunState:
        """The state before any work: bounds ``[0, n]``, no adversarial example; ``pixels``:
        the selection's label (:func:`~l0tre.engine.features.selection_label`); ``precision``:
        of the search's rows (``"float32"`` or ``"bfloat16"``)."""
        n_in, x = problem.size, problem.x_orig
        sens_shape = (n_in, *x.shape[2:]) if problem.space.kind is FeatureKind.PIXEL else tuple(x.shape)
        result = Result(
            lower=torch.zeros(n_in, dtype=torch.int64),
            upper=torch.full((n_in,), problem.n, dtype=torch.int64),
            found=torch.zeros(n_in, dtype=torch.bool),
            adversarial=x.clone(),
            adversarial_label=torch.full((n_in,), -1, dtype=torch.int64),
            predicted=problem.ref.cpu(),
            labels=labels,
            n_features=problem.n,
            epsilon=epsilon,
            features=problem.space.kind.value,
            certified_lower=torch.zeros(n_in, dtype=torch.int64) if certified else None,
            sensitivity=torch.full(sens_shape, float("inf"), dtype=problem.acc_dtype) if keep_sensitivity else None,
            pixels=pixels,
            precision=precision,
        )
        return RunState(result=result, blocked=torch.zeros(n_in, dtype=torch.bool))

    def keeping(self, sensitivity: torch.Tensor | None) -> RunState:
        """This (loaded) state with the caller's choice of keeping level-1 sensitivities: a map
        missing from the checkpoint starts as ``sensitivity`` (all ``inf``: levels done before
        are not re-run); one present but not wanted is dropped."""
        if sensitivity is None:
            self.result.sensitivity = None
        elif self.result.sensitivity is None:
            self.result.sensitivity = sensitivity
        return self

    def snapshot(self, level_complete: bool, seconds: float, stopped: str) -> Result:
        """Record a history entry (t, seconds, evaluations, global bounds) and return a copy.

        An entry that repeats the last one but for its seconds is not recorded: the final
        snapshot after a level, or the first snapshot of a resumed run (the checkpoint holds the
        entry of its last snapshot), add nothing to the history.
        """
        r = self.result
        r.seconds, r.level_complete, r.stopped = seconds, level_complete, stopped
        entry = {"t": float(r.t), "seconds": seconds, "evaluations": float(r.evaluations),
                 "lower": r.global_lower, "upper": r.global_upper, "level_complete": float(level_complete)}
        if not r.history or any(r.history[-1].get(k) != v for k, v in entry.items() if k != "seconds"):
            r.history.append(entry)
        return r.copy()

    def open_inputs(self) -> torch.Tensor:
        """Indices ``(M,)`` of inputs whose bounds have not met (and are not blocked)."""
        r = self.result
        return ((r.lower < r.upper) & ~self.blocked).nonzero().squeeze(1)


def save_checkpoint(path: Path | None, fingerprint: str, state: RunState, seconds: float) -> None:
    """Write ``state`` atomically to ``path`` (nothing when ``path`` is ``None``)."""
    if path is None:
        return
    atomic_torch_save({
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "result": state.result.state(),
        "blocked": state.blocked,
        "level": None if state.level is None else asdict(state.level),
        "seconds": seconds,
    }, path, argument="checkpoint")


def load_checkpoint(path: Path | None, fingerprint: str, labels: torch.Tensor | None) -> RunState | None:
    """The state stored at ``path``, or ``None`` when there is no file.

    Raises:
        ValueError: the file is unreadable, not a checkpoint, or for another run.
    """
    if path is None or not path.exists():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(f"checkpoint: {str(path)!r} is not readable ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint: {str(path)!r} is not an l0tre checkpoint")
    if data["fingerprint"] != fingerprint:
        raise ValueError(
            f"checkpoint: {str(path)!r} was written for another model, inputs or "
            "options (epsilon, features, bounds); delete it or choose another checkpoint path"
        )
    result = Result(**data["result"])
    if labels is not None:
        result.labels = labels
    lvl = data["level"]
    level = LevelProgress(**lvl) if lvl is not None else None
    if "level_evaluations" not in data["result"]:  # written before per-level counts existed
        _count_levels(result, level)
    return RunState(result=result, blocked=data["blocked"], level=level, seconds_before=float(data["seconds"]))


def _count_levels(result: Result, level: LevelProgress | None) -> None:
    """Per-level evaluations of a checkpoint written before they were counted: from the
    evaluations of the history's level-complete entries (left empty where one is missing);
    the level in progress holds every evaluation since the last completed level."""
    ends = {int(h["t"]): int(h["evaluations"]) for h in result.history if h.get("level_complete")}
    if level is None and result.t > 0:
        ends.setdefault(result.t, result.evaluations)
    if any(t not in ends for t in range(1, result.t + 1)):
        return
    cumulative = [0] + [ends[t] for t in range(1, result.t + 1)]
    result.level_evaluations = [b - a for a, b in zip(cumulative, cumulative[1:], strict=False)]
    if level is not None:
        level.evaluations = result.evaluations - cumulative[-1]
