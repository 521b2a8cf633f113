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


@dataclass(frozen=True, eq=False)
class FeatureSpace:
    """Maps between images ``(N, C, H, W)`` and feature values ``(N, n, Cf)``.

    ``positions`` restricts the space to a subset of the image's features (a region, or a given
    set of pixels, e.g. for large images): feature ``i`` is then the full-image feature
    ``positions[i]``, and the others never change. Bounds found in a restricted space are
    bounds over those features only.
    """

    kind: FeatureKind
    shape: tuple[int, int, int]  # (C, H, W)
    positions: torch.Tensor | None = None  # (n,) sorted distinct full-image feature indices

    @property
    def full_n(self) -> int:
        """Features of the whole image."""
        c, h, w = self.shape
        return h * w if self.kind is FeatureKind.PIXEL else c * h * w

    @property
    def n(self) -> int:
        return self.full_n if self.positions is None else int(self.positions.numel())

    @property
    def channels(self) -> int:
        """``Cf``: values per feature."""
        return self.shape[0] if self.kind is FeatureKind.PIXEL else 1

    def restrict(self, positions: torch.Tensor) -> FeatureSpace:
        """The space of the full-image features ``positions`` ``(m,)`` (sorted, distinct)."""
        pos = torch.as_tensor(positions, dtype=torch.int64).cpu().flatten()
        if pos.numel() == 0:
            raise ValueError("pixels: expected at least one feature, got an empty selection")
        if bool((pos < 0).any()) or bool((pos >= self.full_n).any()):
            raise ValueError(f"pixels: expected feature indices in [0, {self.full_n}), got "
                             f"[{int(pos.min())}, {int(pos.max())}]")
        pos = torch.unique(pos)  # sorted, distinct
        return FeatureSpace(self.kind, self.shape, None if pos.numel() == self.full_n else pos)

    def select(self, pixels: object) -> FeatureSpace:
        """The space for the ``pixels`` argument of the public API: ``None`` or ``"all"`` (this
        space), a sequence / LongTensor of feature indices, or a BoolTensor mask of shape
        ``(H, W)`` (pixel features) or ``(C, H, W)`` (element features)."""
        if pixels is None or (isinstance(pixels, str) and pixels == "all"):
            return self
        if isinstance(pixels, str):
            raise ValueError(f"pixels: expected 'all', feature indices or a boolean mask, got {pixels!r}")
        sel = torch.as_tensor(pixels)
        if sel.dtype == torch.bool:
            want = self.shape[1:] if self.kind is FeatureKind.PIXEL else self.shape
            if tuple(sel.shape) != tuple(want):
                raise ValueError(f"pixels: expected a boolean mask of shape {tuple(want)}, got {tuple(sel.shape)}")
            return self.restrict(sel.flatten().nonzero().squeeze(1))
        if sel.dtype.is_floating_point or sel.dim() != 1:
            raise TypeError(f"pixels: expected 1-D integer feature indices, got {sel.dtype} {tuple(sel.shape)}")
        return self.restrict(sel)

    def full_index(self, idx: torch.Tensor) -> torch.Tensor:
        """Full-image feature indices of features ``idx`` (any shape)."""
        if self.positions is None:
            return idx
        return self.positions.to(idx.device)[idx]

    def _all_values(self, x: torch.Tensor) -> torch.Tensor:
        n_in = x.shape[0]
        c, h, w = self.shape
        if self.kind is FeatureKind.PIXEL:
            return x.reshape(n_in, c, h * w).transpose(1, 2)
        return x.reshape(n_in, c * h * w, 1)

    def values(self, x: torch.Tensor) -> torch.Tensor:
        """Feature values of ``x`` ``(N, C, H, W)`` → ``(N, n, Cf)`` (a view when unrestricted)."""
        full = self._all_values(x)
        return full if self.positions is None else full[:, self.positions.to(x.device)]

    def images(self, v: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """Inverse of :meth:`values`: ``(N, n, Cf)`` → ``(N, C, H, W)``; a restricted space
        needs the ``base`` images ``(N, C, H, W)`` for the features outside it."""
        c, h, w = self.shape
        if self.positions is not None:
            if base is None:
                raise ValueError("images: a restricted feature space needs the base images")
            idx = torch.arange(self.n, device=v.device).expand(v.shape[0], -1)
            return self.scatter(base.to(v.dtype).clone(), idx, v)
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
            idx: ``(B, t)`` feature indices (of this space).
            vals: ``(B, t, Cf)`` values.
        """
        b = base.shape[0]
        idx = self.full_index(idx)
        if self.kind is FeatureKind.PIXEL:
            flat = base.view(b, self.shape[0], self.shape[1] * self.shape[2])  # (B, C, HW)
            index = idx.unsqueeze(1).expand(b, self.shape[0], idx.shape[1])
            flat.scatter_(2, index, vals.transpose(1, 2).to(base.dtype))
        else:
            flat = base.view(b, self.full_n)
            flat.scatter_(1, idx, vals[..., 0].to(base.dtype))
        return base
