"""Results and anytime snapshots of an evaluation."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_torch_save

__all__ = ["Result", "atomic_torch_save"]


@dataclass
class Result:
    """Bounds on the maximum safe L0 radius, per input and global.

    Per-input tensors have ``N`` rows (the order of the inputs given).

    Attributes:
        lower: ``(N,)`` LongTensor: every perturbation of ≤ ``lower`` features to grid values
            keeps the label (all levels ``1..lower`` fully checked).
        upper: ``(N,)`` LongTensor: (L0 of the best adversarial example found) − 1, or ``n``.
        found: ``(N,)`` BoolTensor: an adversarial example is known.
        adversarial: ``(N, C, H, W)`` best adversarial example (the original where none).
        adversarial_label: ``(N,)`` label of ``adversarial`` (−1 where none).
        predicted: ``(N,)`` the model's label ``j`` of each original input (the reference).
        labels: ``(N,)`` true labels if given, else ``None``.
        certified_lower: ``(N,)`` largest t proven for all real values, or ``None``.
        t: last fully completed level (0 before the first one completes).
        level_complete: this snapshot is taken at the end of level ``t`` (else mid-level).
        n_features: ``n``; epsilon, features: the grid and feature convention.
        evaluations: model evaluations so far; seconds: wall time so far.
        history: one dict per snapshot (t, seconds, evaluations, global bounds, level_complete);
            a snapshot that repeats the last entry's numbers (the final one after a level, the
            first one of a resumed run) adds none. ``level_complete`` is 1 only on the entry of
            the moment level ``t`` completed.
        level_seconds: wall seconds spent in each completed level (summed over interrupted and
            resumed runs).
        level_evaluations: model evaluations spent in each completed level (sensitivity pass,
            upper-bound search, tightening; summed over interrupted and resumed runs).
        stopped: why the run ended (``"running"``, ``"t_max"``, ``"converged"``,
            ``"time_budget"``, ``"interrupted"``).
        sensitivity: with ``keep_sensitivity=True``: the level-1 sensitivity map, per feature the
            lowest objective score (the margin ``z_j − max_{k≠j} z_k``) over its grid colours —
            ``(N, H, W)`` for pixel features, ``(N, C, H, W)`` for element features; ``inf`` where
            no colour changes the feature or the feature is outside the ``pixels`` selection.
            Else ``None``.
        pixels: the features searched: ``"all"`` (the whole image: ``lower`` is a lower bound
            about the image) or the selection (``"sample:K"``, ``"top:K"``, ``"indices:K"``,
            ``"mask:K"``): then ``lower`` only says that no grid perturbation of the selected
            features flips the label — no lower bound about the image is claimed
            (:attr:`lower_bound_claimed` is ``False``; ``lower_kind`` is ``"selection"``), and
            ``upper`` is a bound about the image only where an adversarial example was found
            (elsewhere it is the selection's size; ``upper_claimed`` in :meth:`to_dict`).
        precision: of the search's rows: ``"float32"`` (the model as it is) or ``"bfloat16"``
            (a bfloat16 copy screens them; rows near the decision boundary, a probe of each call
            and every adversarial example before a bound moves are float32: ``precision=`` of
            :func:`l0tre.evaluate`).
    """

    lower: torch.Tensor
    upper: torch.Tensor
    found: torch.Tensor
    adversarial: torch.Tensor
    adversarial_label: torch.Tensor
    predicted: torch.Tensor
    labels: torch.Tensor | None
    n_features: int
    epsilon: float
    features: str
    t: int = 0
    level_complete: bool = False
    certified_lower: torch.Tensor | None = None
    evaluations: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    level_seconds: list[float] = field(default_factory=list)
    level_evaluations: list[int] = field(default_factory=list)
    stopped: str = "running"
    sensitivity: torch.Tensor | None = None
    pixels: str = "all"
    precision: str = "float32"

    # -- derived ------------------------------------------------------------------------------
    @property
    def x_adv(self) -> torch.Tensor:
        """Alias of :attr:`adversarial` (as in :class:`~l0tre.AttackResult`): ``(N, C, H, W)``."""
        return self.adversarial

    def __repr__(self) -> str:
        certified = "" if self.certified_lower is None else f", certified_lower={self.global_certified_lower:.3f}"
        return (f"Result(inputs={int(self.lower.numel())}, t={self.t}, lower={self.global_lower:.3f}, "
                f"upper={self.global_upper:.3f}{certified}, converged={int(self.converged.sum())}, "
                f"evaluations={self.evaluations}, stopped={self.stopped!r})")

    @property
    def converged(self) -> torch.Tensor:
        """``(N,)`` BoolTensor: ``lower == upper``."""
        return self.lower == self.upper

    @property
    def global_lower(self) -> float:
        return float(self.lower.double().mean()) if self.lower.numel() else float("nan")

    @property
    def global_upper(self) -> float:
        return float(self.upper.double().mean()) if self.upper.numel() else float("nan")

    @property
    def estimate(self) -> float:
        """Paper Def. 5: centre ``(global_lower + global_upper) / 2``."""
        return (self.global_lower + self.global_upper) / 2

    @property
    def radius(self) -> float:
        """Paper Def. 5: error bound ``(global_upper − global_lower) / 2``."""
        return (self.global_upper - self.global_lower) / 2

    @property
    def global_certified_lower(self) -> float | None:
        if self.certified_lower is None:
            return None
        return float(self.certified_lower.double().mean())

    @property
    def accuracy(self) -> float | None:
        """Accuracy of the reference labels against ``labels`` (``None`` without labels)."""
        if self.labels is None or self.labels.numel() == 0:
            return None
        return float((self.predicted == self.labels).double().mean())

    @property
    def lower_bound_claimed(self) -> bool:
        """``lower`` is a lower bound about the whole image (every feature searched); ``False``
        after a run restricted to a pixel selection (``pixels`` other than ``"all"``)."""
        return self.pixels == "all"

    @property
    def lower_kind(self) -> list[str]:
        """Per input: ``"certified"`` where the certified bound equals the grid bound, else
        ``"grid"``; ``"selection"`` for every input of a restricted run (no claim about the image)."""
        if not self.lower_bound_claimed:
            return ["selection"] * int(self.lower.numel())
        if self.certified_lower is None:
            return ["grid"] * int(self.lower.numel())
        return ["certified" if bool(c == g) else "grid" for c, g in zip(self.certified_lower, self.lower, strict=True)]

    def summary(self) -> dict[str, Any]:
        """The global numbers as a plain dict."""
        out: dict[str, Any] = {
            "lower": self.global_lower,
            "upper": self.global_upper,
            "estimate": self.estimate,
            "radius": self.radius,
            "t": self.t,
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "accuracy": self.accuracy,
            "converged": int(self.converged.sum()),
            "inputs": int(self.lower.numel()),
            "lower_bound_claimed": self.lower_bound_claimed,
        }
        if self.certified_lower is not None:
            out["certified_lower"] = self.global_certified_lower
        return out

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self, include_adversarial: bool = False) -> dict[str, Any]:
        """JSON-serialisable dict: summary, per-input rows, history."""
        rows = []
        kinds = self.lower_kind
        for i in range(int(self.lower.numel())):
            row: dict[str, Any] = {
                "index": i,
                "label": None if self.labels is None else int(self.labels[i]),
                "predicted": int(self.predicted[i]),
                "lower": int(self.lower[i]),
                "upper": int(self.upper[i]),
                "lower_kind": kinds[i],
                "converged": bool(self.converged[i]),
                "found": bool(self.found[i]),
                "adversarial_label": int(self.adversarial_label[i]) if bool(self.found[i]) else None,
                "lower_claimed": self.lower_bound_claimed,
                "upper_claimed": self.lower_bound_claimed or bool(self.found[i]),
            }
            if self.certified_lower is not None:
                row["certified_lower"] = int(self.certified_lower[i])
            rows.append(row)
        out: dict[str, Any] = {
            "global": self.summary(),
            "inputs": rows,
            "n_features": self.n_features,
            "epsilon": self.epsilon,
            "features": self.features,
            "pixels": self.pixels,
            "precision": self.precision,
            "lower_bound_claimed": self.lower_bound_claimed,
            "level_complete": self.level_complete,
            "stopped": self.stopped,
            "history": list(self.history),
            "level_seconds": list(self.level_seconds),
            "level_evaluations": list(self.level_evaluations),
        }
        if include_adversarial:
            out["adversarial"] = self.adversarial.tolist()
        return out

    def state(self) -> dict[str, Any]:
        """All fields as a dict of tensors and plain values (``torch.load(weights_only=True)``-safe)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def copy(self) -> Result:
        """A deep copy (tensors cloned) — snapshots never alias the live state."""
        import copy as _copy

        return _copy.deepcopy(self)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temp file + ``os.replace``); read back with :meth:`load`."""
        atomic_torch_save({"format": "l0tre.Result/1", **self.state()}, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Result:
        """Read a result written by :meth:`save`."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"path: no result file at {str(p)!r}")
        try:
            data = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
            raise ValueError(f"path: {str(p)!r} is not a readable l0tre result ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != "l0tre.Result/1":
            raise ValueError(f"path: {str(p)!r} is not an l0tre result file")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
