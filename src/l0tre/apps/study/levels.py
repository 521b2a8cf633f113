"""Per-level records of an anytime run: each input's bounds after every completed level, the
level's cost and each input's share of it (what the paper's Figs. 1–3 and 8–9 are drawn from).

The engine's snapshots carry the bounds; :class:`LevelLog` keeps the one taken when a level
completes (``Result.level_complete``), so nothing in the run loop changes. The log is saved
atomically next to the run's checkpoint, so that a resumed run still has the levels done
before it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ...atomic import atomic_torch_save
from ...engine.subspaces import count_points
from ...result import Result

__all__ = ["LEVELS_FORMAT", "LevelLog", "LevelRecord", "attribute_seconds"]

LEVELS_FORMAT = "l0tre.study-levels/1"


@dataclass(frozen=True)
class LevelRecord:
    """The state after level ``t`` completed.

    Attributes:
        t: the level.
        lower, upper: ``(N,)`` int64 per-input bounds after level ``t``.
        certified_lower: ``(N,)`` int64 certified lower bounds, or ``None`` without certification.
        active: ``(N,)`` bool: the inputs level ``t`` worked on (open after level ``t − 1``).
        seconds: wall seconds of the level; evaluations: its model evaluations.
        input_seconds: ``(N,)`` float64: the level's seconds shared out over the active inputs
            in proportion to the grid points of their sensitivity pass (0 for inactive inputs).
            An attribution, not a per-input measurement: inputs are evaluated together.
    """

    t: int
    lower: torch.Tensor
    upper: torch.Tensor
    certified_lower: torch.Tensor | None
    active: torch.Tensor
    seconds: float
    evaluations: int
    input_seconds: torch.Tensor

    @property
    def global_lower(self) -> float:
        return float(self.lower.double().mean())

    @property
    def global_upper(self) -> float:
        return float(self.upper.double().mean())

    @property
    def estimate(self) -> float:
        """Paper Def. 5: ``(global_lower + global_upper) / 2``."""
        return (self.global_lower + self.global_upper) / 2

    @property
    def radius(self) -> float:
        """Paper Def. 5: ``(global_upper − global_lower) / 2``."""
        return (self.global_upper - self.global_lower) / 2

    @property
    def converged(self) -> int:
        """Inputs with ``lower == upper``."""
        return int((self.lower == self.upper).sum())

    def summary(self) -> dict[str, Any]:
        """The global numbers of the level as a plain dict."""
        out: dict[str, Any] = {
            "t": self.t, "inputs": int(self.lower.numel()), "lower": self.global_lower, "upper": self.global_upper,
            "estimate": self.estimate, "radius": self.radius, "converged": self.converged,
            "active": int(self.active.sum()), "seconds": self.seconds, "evaluations": self.evaluations,
        }
        if self.certified_lower is not None:
            out["certified_lower"] = float(self.certified_lower.double().mean())
        return out


def attribute_seconds(valid_counts: torch.Tensor, active: torch.Tensor, t: int, seconds: float) -> torch.Tensor:
    """``seconds`` shared out over the ``active`` inputs in proportion to their grid points at level ``t``.

    Args:
        valid_counts: ``(N, n)`` valid colours per input and feature (``Problem.valid_counts``).
        active: ``(N,)`` bool.
        t: the level.
        seconds: the level's wall time.

    Returns:
        ``(N,)`` float64, summing to ``seconds`` when any input is active (0 where inactive).
    """
    points = count_points(valid_counts, t) * active.to(torch.float64)
    total = float(points.sum())
    if total <= 0:
        return torch.where(active, seconds / max(1, int(active.sum())), 0.0).to(torch.float64)
    return points * (seconds / total)


class LevelLog:
    """Level records of one run, collected from its snapshots and saved next to its checkpoint.

    Args:
        valid_counts: ``(N, n)`` valid colours per input and feature (for the time attribution).
        path: where the log is saved (``None``: in memory only); an existing file is loaded.
        fingerprint: the engine's fingerprint; a log written for another run is refused.
    """

    def __init__(self, valid_counts: torch.Tensor, path: str | os.PathLike[str] | None, fingerprint: str) -> None:
        self.valid_counts = valid_counts
        self.path = None if path is None else Path(path)
        self.fingerprint = fingerprint
        self.records: list[LevelRecord] = self._load()

    def _load(self) -> list[LevelRecord]:
        if self.path is None or not self.path.exists():
            return []
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
            raise ValueError(f"checkpoint: the level log {str(self.path)!r} is not readable ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != LEVELS_FORMAT:
            raise ValueError(f"checkpoint: {str(self.path)!r} is not a level log of l0tre")
        if data.get("fingerprint") != self.fingerprint:
            raise ValueError(f"checkpoint: the level log {str(self.path)!r} was written for another model, inputs "
                             "or options; delete it with its checkpoint or choose another checkpoint path")
        return [LevelRecord(**r) for r in data["records"]]

    def record(self, t: int) -> LevelRecord | None:
        """The record of level ``t``, or ``None``."""
        return next((r for r in self.records if r.t == t), None)

    def observe(self, snap: Result) -> None:
        """Keep ``snap`` when it is taken at the end of a level not yet recorded (and then save
        the log).

        Raises:
            ValueError: the snapshot completes level ``t`` but level ``t − 1`` was never recorded
                (a checkpoint resumed without its level log).
        """
        t = snap.t
        if not snap.level_complete or t < 1 or self.record(t) is not None or len(snap.level_seconds) < t:
            return
        if t == 1:
            active = torch.ones_like(snap.lower, dtype=torch.bool)
        else:
            prev = self.record(t - 1)
            if prev is None:
                raise ValueError(f"checkpoint: level {t} completed but the level log has no level {t - 1} "
                                 "(a checkpoint of another command?); start the study over")
            active = prev.lower < prev.upper
        seconds = float(snap.level_seconds[t - 1])
        evaluations = int(snap.level_evaluations[t - 1]) if len(snap.level_evaluations) >= t else 0
        cert = None if snap.certified_lower is None else snap.certified_lower.clone()
        self.records.append(LevelRecord(
            t=t, lower=snap.lower.clone(), upper=snap.upper.clone(), certified_lower=cert, active=active,
            seconds=seconds, evaluations=evaluations,
            input_seconds=attribute_seconds(self.valid_counts, active, t, seconds),
        ))
        self.records.sort(key=lambda r: r.t)
        self.save()

    def save(self) -> None:
        """Write the log atomically (nothing without a path)."""
        if self.path is None:
            return
        atomic_torch_save({"format": LEVELS_FORMAT, "fingerprint": self.fingerprint,
                           "records": [asdict(r) for r in self.records]}, self.path, argument="checkpoint")
