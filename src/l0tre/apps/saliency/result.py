"""The result of :func:`l0tre.saliency`: per-pixel maps plus run-wide numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["SaliencyResult"]


@dataclass(repr=False)
class SaliencyResult:
    """Level-1 saliency maps (paper case study 5); all tensors on the CPU.

    Attributes:
        sensitivity: ``(N, H, W)`` float32: the largest drop of the reference class's score
            over the pixel's grid colours, ``score(x) − min_colour score(x')`` (``score ==
            "margin"``: ``z_j − max_{k≠j} z_k``; ``"confidence"``: the softmax probability
            ``c_j``). Raw values, no normalisation; ``0`` where no colour changes the pixel;
            ``NaN`` for pixels outside the ``pixels`` selection (not evaluated).
        flips: ``(N, H, W)`` bool: some grid colour of that single pixel changes the label —
            every one re-checked with a plain float32 forward pass of the model.
        best_value: ``(N, C, H, W)``: per pixel the grid colour of the lowest margin (the
            original value where the pixel is not evaluated or no colour changes it).
        evaluated: ``(N, H, W)`` bool: the pixel was searched.
        base_score: ``(N,)`` the score of each original input.
        predicted: ``(N,)`` int64 reference labels (the model's prediction); labels: true labels
            or ``None``.
        lower: ``(N,)`` int64 proven lower bound of the maximum safe L0 radius from this pass
            (``1`` where no single pixel flips, else ``0``), or ``None`` when not every pixel
            (or not every grid colour) was searched: then nothing is proven.
        upper: ``(N,)`` int64 upper bound (L0 of a verified adversarial example − 1, or ``n``).
        score: ``"margin"`` or ``"confidence"``; epsilon: the grid step; pixels: the selection.
        precision: ``"float32"`` or ``"bfloat16"`` (screening with float32 re-checks).
        evaluations: model rows of the run; rechecked: rows re-evaluated in float32 after a
            bfloat16 screen; seconds: wall time.
    """

    sensitivity: torch.Tensor
    flips: torch.Tensor
    best_value: torch.Tensor
    evaluated: torch.Tensor
    base_score: torch.Tensor
    predicted: torch.Tensor
    labels: torch.Tensor | None
    lower: torch.Tensor | None
    upper: torch.Tensor
    score: str
    epsilon: float
    pixels: str
    precision: str = "float32"
    evaluations: int = 0
    rechecked: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"SaliencyResult(inputs={self.n_inputs}, score={self.score!r}, pixels={self.pixels!r}, "
                f"flipping_pixels={int(self.flips.sum())}, seconds={self.seconds:.3f})")

    @property
    def n_inputs(self) -> int:
        return int(self.predicted.numel())

    @property
    def complete(self) -> bool:
        """Every pixel and every grid colour was searched (so ``lower`` is a proof)."""
        return self.lower is not None

    def summary(self) -> dict[str, Any]:
        """Run-wide numbers as plain values."""
        ev = self.evaluated
        return {
            "inputs": self.n_inputs,
            "score": self.score,
            "epsilon": self.epsilon,
            "pixels": self.pixels,
            "lower_bound_claimed": self.complete,
            "evaluated_pixels": int(ev.sum()),
            "flipping_pixels": int(self.flips.sum()),
            "inputs_with_flip": int(self.flips.flatten(1).any(1).sum()),
            "zero_sensitivity_fraction": float((self.sensitivity[ev] == 0).double().mean()) if bool(ev.any()) else 0.0,
            "precision": self.precision,
            "evaluations": self.evaluations,
            "rechecked": self.rechecked,
            "seconds": self.seconds,
            "seconds_per_image": self.seconds / max(1, self.n_inputs),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict: the summary and per-input rows (the maps are in
        :meth:`arrays`)."""
        rows = []
        for i in range(self.n_inputs):
            ev = self.evaluated[i]
            sens = self.sensitivity[i][ev]
            rows.append({
                "index": i,
                "label": None if self.labels is None else int(self.labels[i]),
                "predicted": int(self.predicted[i]),
                "base_score": float(self.base_score[i]),
                "max_sensitivity": float(sens.max()) if sens.numel() else None,
                "flipping_pixels": int(self.flips[i].sum()),
                "lower": None if self.lower is None else int(self.lower[i]),
                "upper": int(self.upper[i]),
            })
        return {"summary": self.summary(), "inputs": rows, "notes": list(self.notes)}

    def arrays(self) -> dict[str, Any]:
        """The maps as NumPy arrays (the contents of ``saliency.npz``)."""
        out = {
            "sensitivity": self.sensitivity.numpy(), "flips": self.flips.numpy(),
            "best_value": self.best_value.numpy(), "evaluated": self.evaluated.numpy(),
            "base_score": self.base_score.numpy(), "predicted": self.predicted.numpy(),
            "upper": self.upper.numpy(),
        }
        if self.lower is not None:
            out["lower"] = self.lower.numpy()
        if self.labels is not None:
            out["labels"] = self.labels.numpy()
        return out
