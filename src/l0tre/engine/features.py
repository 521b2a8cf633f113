"""Feature space: what one unit of L0 distance is.

``pixel`` (default): a feature is one spatial position ``(h, w)``; changing any of its ``C``
channels counts 1, and a feature's *value* is its colour, a vector of ``C`` channels.
``element``: every tensor element ``(c, h, w)`` is a feature with a scalar value.

All functions are pure tensor functions. Shapes use ``N`` inputs, ``n`` features and ``Cf``
channels per feature (``C`` for pixels, ``1`` for elements).

Pixel selection (:class:`PixelRule`, :func:`select_space`): ``"all"``, ``"sample:K"`` (``K``
features drawn uniformly, seeded) or ``"top:K"`` (the ``K`` features with the largest
first-order margin change, a cheap gradient screen). A restricted space proves nothing about
the features left out: only upper bounds (adversarial examples) are claims about the image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..classifier import Classifier
from ..validate import Choice

__all__ = ["FeatureKind", "FeatureSpace", "PixelRule", "SelectionKind", "margin_gradient", "screen_importance",
           "select_space"]


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
        if isinstance(pixels, (str, PixelRule)):
            rule = PixelRule.parse(pixels)
            if rule.kind is SelectionKind.TOP:
                raise ValueError("pixels: 'top:K' needs the model and inputs; use select_space")
            return rule.apply(self, None)
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


class SelectionKind(Choice):
    """How a pixel selection is made: every feature, a seeded sample, or a gradient screen."""

    ALL = "all"
    SAMPLE = "sample"
    TOP = "top"

    @classmethod
    def argument(cls) -> str:
        return "pixels"


_RULE = re.compile(r"^(all|sample|top)(?::(.*))?$")


@dataclass(frozen=True)
class PixelRule:
    """A parsed ``pixels`` string: ``"all"``, ``"sample:K"`` or ``"top:K"``.

    Attributes:
        kind: the selection kind.
        k: features to keep (``0`` for ``all``).
        seed: the random seed of ``sample`` (``0`` unless given as ``"sample:K:SEED"``).
    """

    kind: SelectionKind
    k: int = 0
    seed: int = 0

    @property
    def complete(self) -> bool:
        """Every feature is searched (so a clean level proves a lower bound)."""
        return self.kind is SelectionKind.ALL

    def __str__(self) -> str:
        if self.kind is SelectionKind.ALL:
            return "all"
        tail = f":{self.seed}" if self.kind is SelectionKind.SAMPLE and self.seed else ""
        return f"{self.kind.value}:{self.k}{tail}"

    @staticmethod
    def parse(value: object) -> PixelRule:
        """``"all"``, ``"sample:K"``, ``"sample:K:SEED"`` or ``"top:K"`` (``K >= 1``)."""
        if isinstance(value, PixelRule):
            return value
        if not isinstance(value, str):
            raise TypeError(f"pixels: expected 'all', 'sample:K' or 'top:K', got {type(value).__name__}")
        m = _RULE.match(value.strip().lower())
        if m is None:
            raise ValueError(f"pixels: expected 'all', 'sample:K' or 'top:K', got {value!r}")
        kind = SelectionKind.parse(m.group(1))
        if kind is SelectionKind.ALL:
            if m.group(2) is not None:
                raise ValueError(f"pixels: expected 'all' without a count, got {value!r}")
            return PixelRule(kind)
        parts = (m.group(2) or "").split(":")
        if len(parts) > (2 if kind is SelectionKind.SAMPLE else 1) or not all(p.isdigit() for p in parts):
            raise ValueError(f"pixels: expected '{kind.value}:K' with an integer K >= 1, got {value!r}")
        k = int(parts[0])
        if k < 1:
            raise ValueError(f"pixels: expected '{kind.value}:K' with K >= 1, got {value!r}")
        return PixelRule(kind, k, int(parts[1]) if len(parts) == 2 else 0)

    def apply(self, space: FeatureSpace, importance: torch.Tensor | None) -> FeatureSpace:
        """The restricted space: ``K`` features (all of them when ``K >= n``).

        Args:
            importance: ``(n_full,)`` screen values for ``top`` (larger first; ties by index).
        """
        if self.kind is SelectionKind.ALL or self.k >= space.full_n:
            return space
        if self.kind is SelectionKind.SAMPLE:
            gen = torch.Generator().manual_seed(self.seed)
            return space.restrict(torch.randperm(space.full_n, generator=gen)[: self.k])
        if importance is None or importance.shape != (space.full_n,):
            raise ValueError(f"pixels: 'top:K' needs importances of shape ({space.full_n},)")
        order = torch.argsort(-importance.double().cpu(), stable=True)
        return space.restrict(order[: self.k])


def margin_gradient(model: Classifier, x: torch.Tensor, ref: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Gradient of the margin ``s_j − max_{k≠j} s_k`` w.r.t. the pixel-space input.

    Args:
        x: ``(N, C, H, W)`` inputs on the model's device; ref: ``(N,)`` reference labels.

    Returns:
        ``(N, C, H, W)`` gradients (float32 / the model dtype, on the model's device).

    Raises:
        ValueError: the model is not a ``torch.nn.Module`` (no gradients to take).
    """
    module = model.modules()
    if module is None:
        raise ValueError("pixels: 'top:K' needs gradients of a torch.nn.Module model, got a plain callable")
    grads = []
    for b0 in range(0, x.shape[0], batch_size):
        xb = x[b0 : b0 + batch_size].detach().clone().requires_grad_(True)
        rb = ref[b0 : b0 + batch_size].view(-1, 1).to(xb.device)
        with torch.enable_grad():
            s = model.as_scores(module(model._normalise(xb)))
            margin = s.gather(1, rb).squeeze(1) - s.scatter(1, rb, float("-inf")).max(dim=1).values
            (g,) = torch.autograd.grad(margin.sum(), xb)
        grads.append(g.detach())
    return torch.cat(grads)


def screen_importance(space: FeatureSpace, x: torch.Tensor, grad: torch.Tensor,
                      bounds: tuple[float, float]) -> torch.Tensor:
    """First-order estimate of the largest margin drop of changing each feature alone (each
    channel moved to the bound its gradient points away from), summed over inputs after scaling
    each input's values to a maximum of 1. Exact for a model whose margin is linear.

    Args:
        x, grad: ``(N, C, H, W)`` inputs and margin gradients.

    Returns:
        ``(n_full,)`` importances (CPU, float64).
    """
    lo, hi = bounds
    per = torch.where(grad > 0, grad * (x - lo), -grad * (hi - x)).double()
    full = FeatureSpace(space.kind, space.shape)
    val = full.values(per).sum(dim=2)  # (N, n_full)
    val = val / val.amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return val.sum(dim=0).cpu()


def selection_label(pixels: object, space: FeatureSpace) -> str:
    """How the run's ``pixels`` argument restricted ``space`` (the space it resolved to):
    ``"all"`` when every feature is searched, else ``"sample:K"`` / ``"top:K"`` (the rule) or
    ``"indices:K"`` / ``"mask:K"`` (given features; ``K`` of them)."""
    if space.positions is None:
        return "all"
    if isinstance(pixels, (str, PixelRule)):
        return str(PixelRule.parse(pixels))
    kind = "mask" if torch.as_tensor(pixels).dtype == torch.bool else "indices"
    return f"{kind}:{space.n}"


def select_space(space: FeatureSpace, pixels: object, model: Classifier, x: torch.Tensor,
                 batch_size: int = 64) -> FeatureSpace:
    """The space for the public ``pixels`` argument, with ``"top:K"`` resolved by a gradient
    screen of ``model`` at the inputs ``x`` ``(N, C, H, W)`` (one selection shared by all
    inputs: the ``K`` features of largest summed, per-input scaled, first-order margin drop)."""
    if isinstance(pixels, (str, PixelRule)):
        rule = PixelRule.parse(pixels)
        if rule.kind is SelectionKind.TOP and rule.k < space.full_n:
            xd = x.to(device=model.device, dtype=model.dtype)
            ref = torch.cat([model(xd[i : i + batch_size]).argmax(1) for i in range(0, xd.shape[0], batch_size)])
            grad = margin_gradient(model, xd, ref, batch_size)
            return rule.apply(space, screen_importance(space, xd, grad, model.bounds))
        return rule.apply(space, None)
    return space.select(pixels)
