"""Validated options of :func:`l0tre.saliency`."""

from __future__ import annotations

from dataclasses import dataclass

from ...engine.features import PixelRule
from ...engine.grid import check_epsilon
from ...execution.precision import Precision
from ...validate import Choice, optional_int, positive_int

__all__ = ["SaliencyOptions", "ScoreKind"]


class ScoreKind(Choice):
    """What a pixel's sensitivity measures: the drop of the reference class's ``margin``
    ``z_j − max_{k≠j} z_k`` or of its softmax ``confidence`` ``c_j`` (the paper's)."""

    MARGIN = "margin"
    CONFIDENCE = "confidence"

    @classmethod
    def argument(cls) -> str:
        return "score"


@dataclass(frozen=True)
class SaliencyOptions:
    """The checked options (see :func:`l0tre.saliency`)."""

    epsilon: float
    score: ScoreKind
    pixels: PixelRule
    baseline: float | None
    batch_size: int | None
    max_memory: int | None
    precision: Precision
    upper_k: int

    @staticmethod
    def build(*, epsilon: object, score: object, pixels: object, baseline: object, batch_size: object,
              max_memory: object, precision: object, upper_k: object) -> SaliencyOptions:
        check_epsilon(epsilon)
        if baseline is not None and (isinstance(baseline, bool) or not isinstance(baseline, (int, float))):
            raise TypeError(f"baseline: expected None or a number on the grid, got {type(baseline).__name__}")
        return SaliencyOptions(
            epsilon=float(epsilon),  # type: ignore[arg-type]
            score=ScoreKind.parse(score),
            pixels=PixelRule.parse("all" if pixels is None else pixels),
            baseline=None if baseline is None else float(baseline),
            batch_size=optional_int("batch_size", batch_size),
            max_memory=optional_int("max_memory", max_memory),
            precision=Precision.parse(precision),
            upper_k=positive_int("upper_k", upper_k),
        )
