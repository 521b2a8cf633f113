"""Feature space: what one unit of L0 distance is.

``pixel`` (default): a feature is one spatial position ``(h, w)``; changing any of its ``C``
channels counts 1, and a feature's *value* is its colour, a vector of ``C`` channels.
``element``: every tensor element ``(c, h, w)`` is a feature with a scalar value.

All functions are pure tensor functions. Shapes use ``N`` inputs, ``n`` features and ``Cf``
channels per feature (``C`` for pixels, ``1`` for elements).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..validate import Choice

__all__ = ["FeatureKind", "FeatureSpace"]


class FeatureKind(Choice):
    PIXEL = "pixel"
    ELEMENT = "element"

    @classmethod
    def argument(cls) -> str:
        return "features"


@dataclass(frozen=True)
class FeatureSpace:
    """Maps between images ``(N, C, H, W)`` and feature values ``(N, n, Cf)``."""

    kind: FeatureKind
    shape: tuple[int, int, int]  # (C, H, W)

    @property
    def n(self) -> int:
        c, h, w = self.shape
        return h * w if self.kind is FeatureKind.PIXEL else c * h * w

    @property
    def channels(self) -> int:
        """``Cf``: values per feature."""
        return self.shape[0] if self.kind is FeatureKind.PIXEL else 1

    def values(self, x: torch.Tensor) -> torch.Tensor:
        """Feature values of ``x`` ``(N, C, H, W)`` → ``(N, n, Cf)``."""
        n_in = x.shape[0]
        c, h, w = self.shape
        if self.kind is FeatureKind.PIXEL:
            return x.reshape(n_in, c, h * w).transpose(1, 2)
        return x.reshape(n_in, c * h * w, 1)

    def images(self, v: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`values`: ``(N, n, Cf)`` → ``(N, C, H, W)``."""
        c, h, w = self.shape
        if self.kind is FeatureKind.PIXEL:
            return v.transpose(1, 2).reshape(v.shape[0], c, h, w)
        return v.reshape(v.shape[0], c, h, w)

    def changed(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """BoolTensor ``(N, n)``: feature differs (any channel, exact comparison)."""
        return (self.values(x) != self.values(x0)).any(dim=2)

    def l0(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """L0 distance in features ``(N,)`` (LongTensor)."""
        return self.changed(x, x0).sum(dim=1)

    def scatter(self, base: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        """Set features in place and return ``base``.

        Args:
            base: ``(B, C, H, W)`` images (modified in place).
            idx: ``(B, t)`` feature indices.
            vals: ``(B, t, Cf)`` values.
        """
        b = base.shape[0]
        if self.kind is FeatureKind.PIXEL:
            flat = base.view(b, self.shape[0], self.shape[1] * self.shape[2])  # (B, C, HW)
            index = idx.unsqueeze(1).expand(b, self.shape[0], idx.shape[1])
            flat.scatter_(2, index, vals.transpose(1, 2).to(base.dtype))
        else:
            flat = base.view(b, self.n)
            flat.scatter_(1, idx, vals[..., 0].to(base.dtype))
        return base
