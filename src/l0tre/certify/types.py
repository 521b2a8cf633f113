"""Result types, statuses and errors of the certification package."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

__all__ = ["CertifyResult", "LevelResult", "Status", "UnsupportedLayerError"]


class UnsupportedLayerError(ValueError):
    """The model contains a layer or function the bound propagation cannot handle soundly."""


class Status(str, enum.Enum):
    """Outcome of a certification query.

    ``PROVEN``: no input in the set changes the label (a sound certificate).
    ``FALSIFIED``: a counterexample was found and re-checked by a plain forward pass.
    ``UNKNOWN``: neither (budget exhausted or bounds too loose).
    """

    PROVEN = "proven"
    FALSIFIED = "falsified"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CertifyResult:
    """Per-set certification result.

    Attributes:
        margin_lb: ``(S, K)`` lower bounds on ``z_label - z_k`` over each set; the label's own
            column is ``+inf``.
        proven: ``(S,)`` BoolTensor, all margins ``> 0``.
        status: ``(S,)`` list of :class:`Status` (``PROVEN`` or ``UNKNOWN`` without
            branch and bound; ``FALSIFIED`` only when a counterexample was found).
        counterexamples: ``{set index: (C, H, W) pixel-space input}`` re-checked by a forward
            pass of the original model (its argmax differs from the label).
        method: the bounding method used.
        seconds: wall-clock time.
        nodes: boxes bounded in total (``S`` without branch and bound).
    """

    margin_lb: torch.Tensor
    proven: torch.Tensor
    status: list[Status]
    counterexamples: dict[int, torch.Tensor] = field(default_factory=dict)
    method: str = "crown"
    seconds: float = 0.0
    nodes: int = 0

    @property
    def n_proven(self) -> int:
        return int(self.proven.sum().item())

    @property
    def n_falsified(self) -> int:
        return sum(s is Status.FALSIFIED for s in self.status)


@dataclass(frozen=True)
class LevelResult:
    """Outcome of :func:`l0tre.certify.certify_level` for one input and level ``t``.

    Attributes:
        t: the level (number of features changed at once).
        status: ``PROVEN`` (every ``t``-subset of features is safe: the L0 ball of radius
            ``t`` is robust), ``FALSIFIED`` (an adversarial example changing at most ``t``
            features was found and re-checked) or ``UNKNOWN``.
        boxes_tried, boxes_proven: covering boxes bounded / proven in one shot.
        subsets_checked: individual ``t``-subsets that needed branch and bound.
        bab_nodes: boxes bounded inside branch and bound.
        seconds: wall-clock time.
        counterexample: the adversarial input ``(C, H, W)`` when ``FALSIFIED``.
        counterexample_subset: the features it changes (indices), when ``FALSIFIED``.
        block_sizes: number of proven boxes per box size (features freed).
        separable_pairs: pairs proven from single-feature bounds (``t = 2``, see
            :mod:`l0tre.certify.separable`).
        separable_triples: triples proven from single-feature and pair bounds (``t = 3``, see
            :mod:`l0tre.certify.triples`).
    """

    t: int
    status: Status
    boxes_tried: int = 0
    boxes_proven: int = 0
    subsets_checked: int = 0
    bab_nodes: int = 0
    seconds: float = 0.0
    counterexample: torch.Tensor | None = None
    counterexample_subset: tuple[int, ...] | None = None
    block_sizes: dict[int, int] = field(default_factory=dict)
    separable_pairs: int = 0
    separable_triples: int = 0

    @property
    def certified(self) -> bool:
        return self.status is Status.PROVEN
