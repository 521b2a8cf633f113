"""Objectives: what the engine searches for.

The engine is objective-agnostic: for a batch of perturbed inputs an objective returns a
*score* (lower is closer to success; used to pick each subspace's solution and to tighten),
a *confidence* (the paper's ``c_j``, used to rank subspaces by sensitivity) and *success*
(the property we want to violate is violated, e.g. the label changed).

:class:`Misclassification` is the paper's robustness objective. Other applications (e.g.
coverage-driven test generation: make a hidden neuron fire) plug in another objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from .classifier import Classifier

__all__ = ["FromOutputs", "Misclassification", "Objective", "ObjectiveValues", "from_outputs_capability"]


@dataclass(frozen=True)
class ObjectiveValues:
    """Per-sample values, each ``(B,)``."""

    score: torch.Tensor
    confidence: torch.Tensor
    success: torch.Tensor
    label: torch.Tensor  # predicted label (or another identifying integer), ``(B,)``

    def with_rows(self, idx: torch.Tensor, exact: ObjectiveValues) -> ObjectiveValues:
        """These values with rows ``idx`` ``(R,)`` replaced by ``exact`` (``(R,)`` each), e.g. rows
        recomputed exactly after a fast approximate pass."""
        fields = {}
        for name in ("score", "confidence", "success", "label"):
            v = getattr(self, name).clone()
            v[idx] = getattr(exact, name).to(device=v.device, dtype=v.dtype)
            fields[name] = v
        return ObjectiveValues(**fields)


class Objective(Protocol):
    """Protocol for engine objectives."""

    name: str

    def reference(self, model: Classifier, x0: torch.Tensor) -> torch.Tensor:
        """Per-input reference ``(N,)`` (e.g. the predicted label ``j``) for ``x0`` ``(N,C,H,W)``."""
        ...

    def evaluate(self, model: Classifier, x: torch.Tensor, ref: torch.Tensor) -> ObjectiveValues:
        """Values for ``x`` ``(B, C, H, W)`` against references ``ref`` ``(B,)``."""
        ...


@runtime_checkable
class FromOutputs(Protocol):
    """Optional capability of an objective: its values from raw model outputs ``(B, K)``.

    With it the engine may compute outputs its own way (incremental windows, pair tables,
    reduced precision), re-checking rows near the boundary with :meth:`Objective.evaluate`.
    """

    def from_outputs(self, model: Classifier, raw: torch.Tensor, ref: torch.Tensor) -> ObjectiveValues:
        """Values for raw outputs ``raw`` ``(B, K)`` against references ``ref`` ``(B,)``."""
        ...


def from_outputs_capability(objective: Objective) -> FromOutputs | None:
    """``objective`` as a :class:`FromOutputs` when it declares that capability, else ``None``."""
    return objective if isinstance(objective, FromOutputs) else None


class Misclassification:
    """Flip the label: success iff ``argmax f(x) ≠ j``.

    score = margin ``s_j − max_{k≠j} s_k`` (logits, or log-probabilities for softmax models);
    confidence = ``log c_j`` (log-softmax of the scores; monotone in the paper's ``c_j``).
    """

    name = "misclassification"

    def reference(self, model: Classifier, x0: torch.Tensor) -> torch.Tensor:
        return model(x0).argmax(dim=1)

    def evaluate(self, model: Classifier, x: torch.Tensor, ref: torch.Tensor) -> ObjectiveValues:
        return self.from_outputs(model, model(x), ref)

    def from_outputs(self, model: Classifier, raw: torch.Tensor, ref: torch.Tensor) -> ObjectiveValues:
        """Values from raw model outputs ``(B, classes)`` (lets the engine compute outputs its own
        way, e.g. incrementally)."""
        s = model.as_scores(raw)
        ref = ref.to(s.device)
        s_j = s.gather(1, ref.view(-1, 1)).squeeze(1)
        others = s.scatter(1, ref.view(-1, 1), float("-inf"))
        margin = s_j - others.max(dim=1).values
        conf = torch.log_softmax(s, dim=1).gather(1, ref.view(-1, 1)).squeeze(1)
        pred = raw.argmax(dim=1)
        return ObjectiveValues(score=margin, confidence=conf, success=pred != ref, label=pred)
