"""The ε-grid of values a perturbed feature may take.

Per channel the grid is ``lo + k·ε·(hi − lo)`` for ``k = 0..1/ε`` (both ends included).
A pixel with ``C`` channels takes every combination: ``G^C`` colours, ``G = 1/ε + 1``.
Colours equal to the feature's original value are not perturbations and are masked out.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

__all__ = ["check_epsilon", "grid_values", "colours", "valid_colours"]


def check_epsilon(epsilon: object) -> int:
    """Validate ε and return ``1/ε`` (the number of grid steps).

    Raises:
        TypeError: ε is not a number.
        ValueError: ε ≤ 0, ε > 1 or ε does not divide 1.
    """
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, Fraction)):
        raise TypeError(f"epsilon: expected a number in (0, 1] dividing 1, got {type(epsilon).__name__}")
    eps = float(epsilon)
    if not math.isfinite(eps) or eps <= 0 or eps > 1:
        raise ValueError(f"epsilon: expected a number in (0, 1] that divides 1 (e.g. 0.5, 0.25), got {epsilon}")
    steps = round(1.0 / eps)
    if steps < 1 or abs(steps * eps - 1.0) > 1e-9:
        raise ValueError(
            f"epsilon: expected 1/epsilon to be a whole number (0.5, 0.25, 0.1, ...), got {epsilon} "
            f"(1/epsilon = {1.0 / eps:.6g})"
        )
    return steps


def grid_values(steps: int, bounds: tuple[float, float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-channel grid ``(G,)`` with ``G = steps + 1``; exact end points ``lo`` and ``hi``."""
    lo, hi = bounds
    k = torch.arange(steps + 1, dtype=torch.float64)
    vals = lo + k / steps * (hi - lo)
    vals[0], vals[-1] = lo, hi
    return vals.to(dtype)


def colours(grid: torch.Tensor, channels: int) -> torch.Tensor:
    """All ``G^Cf`` combinations of per-channel grid values → ``(G^Cf, Cf)``.

    Row ``p`` has channel ``c`` equal to ``grid[(p // G^(Cf-1-c)) % G]`` (row-major order).
    """
    mesh = torch.cartesian_prod(*([grid] * channels)) if channels > 1 else grid.unsqueeze(1)
    return mesh.reshape(-1, channels)


def valid_colours(feature_values: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Which colours are real perturbations of each feature.

    Args:
        feature_values: ``(N, n, Cf)`` original values.
        palette: ``(P1, Cf)`` colours from :func:`colours`.

    Returns:
        BoolTensor ``(N, n, P1)``: colour differs from the original in at least one channel.
    """
    pal = palette.to(device=feature_values.device, dtype=feature_values.dtype)
    return (feature_values.unsqueeze(2) != pal.view(1, 1, *pal.shape)).any(dim=3)
