"""What is fixed for one level ``t`` of the engine and shared by its work units."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .features import FeatureSpace

__all__ = ["LevelContext"]


@dataclass(frozen=True)
class LevelContext:
    """Everything fixed for one level ``t`` (shared by its units).

    Attributes:
        space: the feature space.
        palette: ``(P1, Cf)`` colours on the model device.
        t: the level (subset size).
        table: binomial table for unranking ``(t+1, n+1)``.
        digits: ``(P, t)`` colour index of each subset member for point ``p`` (``P = P1^t``).
    """

    space: FeatureSpace
    palette: torch.Tensor
    t: int
    table: torch.Tensor
    digits: torch.Tensor

    @staticmethod
    def build(space: FeatureSpace, palette: torch.Tensor, t: int, table: torch.Tensor) -> LevelContext:
        p1 = palette.shape[0]
        p = torch.arange(p1**t, device=palette.device)
        digits = torch.stack([(p // p1 ** (t - 1 - j)) % p1 for j in range(t)], dim=1)
        return LevelContext(space=space, palette=palette, t=t, table=table, digits=digits)

    def values(self, point: torch.Tensor) -> torch.Tensor:
        """Values ``(B, t, Cf)`` of point indices ``point`` ``(B,)``."""
        return self.palette[self.digits[point]]
