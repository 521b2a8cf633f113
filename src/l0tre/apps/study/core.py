"""Case study 1 of the paper: anytime global robustness evaluation, :func:`study_global`.

One anytime run of the engine (:func:`l0tre.api.prepare`, :func:`l0tre.engine.drive`) whose
level-complete snapshots are kept (:class:`~.levels.LevelLog`): each input's bounds after every
level (Figs. 1a, 2), the global bounds per level (Fig. 1b) and the time per level (Fig. 1c).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...api import prepare
from ...classifier import ModelLike
from ...engine import Executor
from ...engine.loop import drive
from ...engine.options import DEFAULT_MAX_EVALUATIONS
from ...result import Result
from ...validate import optional_int
from .levels import LevelLog, LevelRecord

__all__ = ["StudyResult", "levels_path", "study_global"]


def levels_path(checkpoint: str | os.PathLike[str]) -> Path:
    """Where the level log of the run with ``checkpoint`` is kept: ``<checkpoint>.levels.pt``."""
    p = Path(checkpoint)
    return p.with_name(p.name + ".levels.pt")


@dataclass
class StudyResult:
    """Outcome of :func:`study_global`.

    Attributes:
        result: the last snapshot of the run (:class:`l0tre.Result`, per-input tensors ``(N,)``).
        levels: one :class:`~.levels.LevelRecord` per completed level ``t = 1, 2, …``.
        focus: the input shown in Fig. 1a (row index into the inputs).
    """

    result: Result
    levels: list[LevelRecord]
    focus: int

    def partial_level(self) -> LevelRecord | None:
        """The state of a level the run stopped in part-way (time budget, Ctrl-C), as a record of
        level ``t + 1`` (its ``seconds`` and ``evaluations`` are those spent in it so far; no
        time per input), or ``None`` when the run ended at a level's end."""
        r = self.result
        done = self.levels[-1].t if self.levels else 0
        if r.level_complete or r.stopped not in ("time_budget", "interrupted") or done != r.t:
            return None
        last = self.levels[-1] if self.levels else None
        active = torch.ones_like(r.lower, dtype=torch.bool) if last is None else last.lower < last.upper
        if not bool(active.any()):
            return None
        spent = max(0.0, r.seconds - sum(r.level_seconds))
        return LevelRecord(t=done + 1, lower=r.lower.clone(), upper=r.upper.clone(),
                           certified_lower=None if r.certified_lower is None else r.certified_lower.clone(),
                           active=active, seconds=spent, evaluations=r.evaluations - sum(r.level_evaluations),
                           input_seconds=torch.zeros(r.lower.shape, dtype=torch.float64))

    def level_table(self) -> list[dict[str, Any]]:
        """Per completed level: global lower, upper, estimate, radius, converged, seconds, …"""
        return [r.summary() for r in self.levels]

    def input_time_quartiles(self) -> list[dict[str, float]]:
        """Per level: quartiles of the attributed seconds per active input (Fig. 1c)."""
        out = []
        for r in self.levels:
            sec = r.input_seconds[r.active].numpy()
            q = np.percentile(sec, [0, 25, 50, 75, 100]) if sec.size else np.full(5, np.nan)
            out.append({"t": r.t, "min": float(q[0]), "q1": float(q[1]), "median": float(q[2]),
                        "q3": float(q[3]), "max": float(q[4]), "inputs": int(sec.size)})
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: ``global`` (the final numbers), ``levels``, ``input_seconds``,
        ``focus`` and one row per input with its bounds after every level."""
        rows = []
        for i in range(int(self.result.lower.numel())):
            row: dict[str, Any] = {
                "row": i,
                "label": None if self.result.labels is None else int(self.result.labels[i]),
                "predicted": int(self.result.predicted[i]),
                "lower": [int(r.lower[i]) for r in self.levels],
                "upper": [int(r.upper[i]) for r in self.levels],
                "seconds": [float(r.input_seconds[i]) for r in self.levels],
                "final_lower": int(self.result.lower[i]),
                "final_upper": int(self.result.upper[i]),
            }
            if self.result.certified_lower is not None:
                row["certified_lower"] = [int(r.certified_lower[i]) for r in self.levels
                                          if r.certified_lower is not None]
            rows.append(row)
        return {
            "global": self.result.summary(),
            "stopped": self.result.stopped,
            "n_features": self.result.n_features,
            "epsilon": self.result.epsilon,
            "features": self.result.features,
            "levels": self.level_table(),
            "partial_level": None if (part := self.partial_level()) is None else part.summary(),
            "input_seconds": self.input_time_quartiles(),
            "focus": self.focus,
            "history": list(self.result.history),
            "inputs": rows,
        }


def choose_focus(levels: list[LevelRecord], focus: int | None, n_inputs: int, n_features: int) -> int:
    """The input of Fig. 1a: ``focus`` if given, else the one with the largest upper bound after
    level 1 among those with an adversarial example (the paper shows such a worst case); the
    lowest row on ties, row 0 when there is none."""
    if focus is not None:
        if focus >= n_inputs:
            raise ValueError(f"focus: expected a row index below the {n_inputs} inputs, got {focus}")
        return focus
    if not levels:
        return 0
    up = levels[0].upper
    score = torch.where(up < n_features, up, torch.full_like(up, -1))
    return int(torch.argmax(score)) if bool((score >= 0).any()) else 0


def study_global(
    model: ModelLike,
    x: torch.Tensor | np.ndarray,
    *,
    labels: torch.Tensor | np.ndarray | None = None,
    epsilon: float = 0.5,
    t_max: int = 2,
    features: str = "pixel",
    certify: bool = False,
    certify_time_limit: float = 60.0,
    batch_size: int | None = None,
    max_memory: int | None = None,
    time_budget: float | None = None,
    time_budget_from_now: bool = False,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    report_every: float = 5.0,
    mode: str = "auto",
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    focus: int | None = None,
    show_progress: bool = False,
    on_snapshot: Callable[[Result], None] | None = None,
    executor: Executor | None = None,
) -> StudyResult:
    """Anytime global robustness of ``model`` on ``x`` with the per-level record of the paper's
    case study 1 (Figs. 1–2): levels ``t = 1 … t_max``, each input's bounds after every level.

    Args:
        model, x, labels, epsilon, t_max, features, batch_size, max_memory, time_budget, device,
            report_every, mode, max_evaluations: as :func:`l0tre.evaluate` (``x``: ``(N, C, H, W)``).
        certify: also prove lower bounds for all real values (``certified_lower`` per level).
        time_budget_from_now: count ``time_budget`` from this call on, not including the seconds
            of a resumed checkpoint (default ``False``: the total, as :func:`l0tre.evaluate`).
        certify_time_limit: seconds per input and level for certification.
        checkpoint: a file path (default ``None``); an existing one is resumed, and the level log
            is kept beside it (:func:`levels_path`).
        focus: the input (row) shown in Fig. 1a (default ``None``: the largest gap after t = 1).
        show_progress: a tqdm progress bar on stderr.
        on_snapshot: called with every snapshot (a copy), e.g. to write outputs.
        executor: where the work units run (default ``None``: here), e.g. a
            :class:`~l0tre.cluster.RayExecutor`; results do not depend on it.

    Returns:
        a :class:`StudyResult`: the last snapshot and one record per completed level.

    Raises:
        TypeError, ValueError: as :func:`l0tre.evaluate`; a level log written for another run.
    """
    focus = optional_int("focus", focus, minimum=0)
    if focus is not None and hasattr(x, "shape") and focus >= int(x.shape[0]):
        raise ValueError(f"focus: expected a row index below the {int(x.shape[0])} inputs, got {focus}")
    progress = None
    if show_progress:
        from ...progress import TqdmProgress

        progress = TqdmProgress()
    engine = prepare(model, x, labels=labels, epsilon=epsilon, t_max=t_max, features=features, certify=certify,
                     certify_time_limit=certify_time_limit, batch_size=batch_size, max_memory=max_memory,
                     time_budget=time_budget, device=device, checkpoint=checkpoint, report_every=report_every,
                     mode=mode, max_evaluations=max_evaluations, progress=progress, executor=executor)
    if time_budget is not None and time_budget_from_now:
        engine.set_time_budget(time_budget, from_now=True)
    log = LevelLog(engine.problem.valid_counts, None if checkpoint is None else levels_path(checkpoint),
                   engine.fingerprint)

    def observe(snap: Result) -> None:
        """Record level ends; then the caller's callback."""
        log.observe(snap)
        if on_snapshot is not None:
            on_snapshot(snap)

    try:
        final = drive(engine, observe)
    finally:
        engine.progress.close()
    return StudyResult(result=final, levels=list(log.records),
                       focus=choose_focus(log.records, focus, int(final.lower.numel()), final.n_features))
