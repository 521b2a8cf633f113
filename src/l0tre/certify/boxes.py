"""Boxes for feature subsets and batched one-shot certification.

A *feature* is a pixel (all ``C`` channels of one spatial position, index ``h*W + w``) or,
with ``features="element"``, one tensor element (flat index into ``C*H*W``). The box of a
subset frees its features over the full pixel range ``[lo, hi]`` and fixes every other
feature at ``x0``.

How boxes are bounded (method, batch size, dtype, tolerance …) is one
:class:`~l0tre.certify.settings.CertifySettings`.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from l0tre.certify.grouping import extent_groups
from l0tre.certify.perbox import eligible
from l0tre.certify.settings import CertifySettings
from l0tre.certify.target import Target, resolve
from l0tre.certify.types import CertifyResult, Status
from l0tre.classifier import ieee_float32

__all__ = ["as_labels", "bound_margins", "box_target", "certify_boxes", "certify_subsets", "feature_count",
           "subset_boxes"]

_FEATURES = ("pixel", "element")


def _check_features(features: str) -> str:
    if features not in _FEATURES:
        raise ValueError(f"features: expected 'pixel' or 'element', got {features!r}")
    return features


def feature_count(shape: tuple[int, ...], features: str) -> int:
    """Number of features of a ``(C, H, W)`` input."""
    c, h, w = shape
    return h * w if _check_features(features) == "pixel" else c * h * w


def subset_boxes(x0: Tensor, subsets: Tensor, *, features: str = "pixel",
                 bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[Tensor, Tensor]:
    """Boxes ``(lo, hi)``, each ``(S, C, H, W)``, for ``subsets`` ``(S, k)`` of feature
    indices (negative entries are padding and ignored)."""
    if x0.dim() != 3:
        raise ValueError(f"x0: expected a (C, H, W) image, got shape {tuple(x0.shape)}")
    if subsets.dim() != 2 or subsets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"subsets: expected an integer tensor of shape (S, k), got "
                         f"{tuple(subsets.shape)} {subsets.dtype}")
    c, h, w = x0.shape
    n = feature_count((c, h, w), features)
    subsets = subsets.to(device=x0.device, dtype=torch.int64)
    if subsets.numel() and int(subsets.max()) >= n:
        raise ValueError(f"subsets: feature index {int(subsets.max())} out of range (n = {n})")
    s = subsets.shape[0]
    idx = torch.where(subsets >= 0, subsets, torch.full_like(subsets, n))
    count = torch.zeros((s, n + 1), dtype=torch.int32, device=x0.device)
    count.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.int32))
    mask = count[:, :n] > 0
    if features == "pixel":
        full = mask.view(s, 1, h, w).expand(s, c, h, w)
    else:
        full = mask.view(s, c, h, w)
    base = x0.unsqueeze(0).expand(s, c, h, w)
    lo = torch.where(full, torch.full_like(base, bounds[0]), base)
    hi = torch.where(full, torch.full_like(base, bounds[1]), base)
    return lo, hi


def as_labels(label: int | Tensor, b: int, device: torch.device) -> Tensor:
    t = torch.as_tensor(label, device=device, dtype=torch.int64)
    if t.dim() == 0:
        return t.expand(b).clone()
    if t.shape != (b,):
        raise ValueError(f"label: expected an int or a (B,) tensor, got shape {tuple(t.shape)}")
    return t


@ieee_float32()
def bound_margins(target: Target, lo: Tensor, hi: Tensor, labels: Tensor, settings: CertifySettings) -> Tensor:
    """Margin lower bounds ``(B, K)`` in batches of ``settings.batch_size`` boxes (on the
    graph's device; label column ``+inf``)."""
    k = target.num_classes
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise ValueError(f"label: expected values in [0, {k}), got {labels.tolist()[:5]}")
    opts, batch_size = settings.bound_options(target.graph), settings.batch_size
    order: Tensor | None = None
    if lo.shape[0] > batch_size and eligible(target.graph):
        # batches of boxes with equally large windows (see l0tre.certify.perbox)
        order = torch.cat(extent_groups(lo, hi))
        lo, hi, labels = lo[order], hi[order], labels[order.to(labels.device)]
    parts = [
        target.margin_bounds(lo[s:s + batch_size], hi[s:s + batch_size],
                             labels[s:s + batch_size], opts)
        for s in range(0, lo.shape[0], batch_size)
    ]
    if not parts:
        return torch.zeros((0, k), dtype=target.graph.dtype, device=target.graph.device)
    out = torch.cat(parts)
    if order is None:
        return out
    return torch.empty_like(out).index_copy_(0, order.to(out.device), out)


def box_target(model: Any, lo: Tensor, hi: Tensor, label: int | Tensor, preprocessing: Any,
               settings: CertifySettings) -> tuple[Target, Tensor]:
    """The target for general boxes ``(B, C, H, W)`` and their labels ``(B,)`` (validated)."""
    if lo.dim() != 4 or lo.shape != hi.shape:
        raise ValueError(f"lo, hi: expected two (B, C, H, W) tensors of the same shape, got "
                         f"{tuple(lo.shape)} and {tuple(hi.shape)}")
    target = resolve(model, tuple(lo.shape[1:]), preprocessing=preprocessing, dtype=settings.dtype)
    return target, as_labels(label, lo.shape[0], target.graph.device)


def _result(margin: Tensor, tol: float, method: str, start: float) -> CertifyResult:
    proven = (margin > tol).all(1).cpu()
    status = [Status.PROVEN if p else Status.UNKNOWN for p in proven.tolist()]
    return CertifyResult(margin.cpu(), proven, status, {}, method, time.perf_counter() - start,
                         int(margin.shape[0]))


@ieee_float32()
def certify_boxes(model: Any, lo: Tensor, hi: Tensor, label: int | Tensor, *, preprocessing: Any = None,
                  settings: CertifySettings | None = None, **options: Any) -> CertifyResult:
    """Certify general pixel-space boxes ``[lo, hi]`` ``(B, C, H, W)`` (no branching).

    Args:
        model: ``nn.Module`` (inputs after normalisation), prebuilt Graph/Target, or an
            ``l0tre.Classifier``.
        lo, hi: box corners in pixel space.
        label: the class to keep, an int or ``(B,)``.
        preprocessing: per-channel ``(mean, std)`` applied in front of the model.
        settings: :class:`~l0tre.certify.settings.CertifySettings` (here: ``method``,
            ``intermediate``, ``dtype``, ``batch_size``, ``max_memory``, ``margin_tol``);
            ``options``: any of its fields, applied on top.

    Returns:
        :class:`CertifyResult` with ``margin_lb`` ``(B, K)`` and ``proven`` ``(B,)`` (every
        margin bound ``> margin_tol``).
    """
    start = time.perf_counter()
    settings = CertifySettings.build(settings, **options)
    target, labels = box_target(model, lo, hi, label, preprocessing, settings)
    margin = bound_margins(target, lo, hi, labels, settings)
    return _result(margin, settings.margin_tol, settings.method_for(target.graph), start)


@ieee_float32()
def certify_subsets(model: Any, x0: Tensor, label: int, subsets: Tensor, *, features: str = "pixel",
                    bounds: tuple[float, float] | None = None, preprocessing: Any = None,
                    settings: CertifySettings | None = None, **options: Any) -> CertifyResult:
    """Certify that freeing the features of each subset cannot change the label.

    Args:
        model: ``nn.Module`` (inputs after normalisation), prebuilt Graph/Target, or an
            ``l0tre.Classifier`` (its preprocessing and bounds are used unless given).
        x0: the ``(C, H, W)`` pixel-space input.
        label: its class.
        subsets: ``(S, k)`` LongTensor of feature indices (negative entries = padding).
        features: ``"pixel"`` (index ``h*W + w``, all channels free) or ``"element"``.
        bounds: pixel range the free features range over (default: the classifier's or
            ``(0, 1)``).
        preprocessing, settings, options: as in :func:`certify_boxes`.

    Returns:
        :class:`CertifyResult`: ``margin_lb`` ``(S, K)`` (label column ``+inf``), ``proven``
        ``(S,)`` (every margin ``> margin_tol``), statuses ``PROVEN``/``UNKNOWN``.
    """
    start = time.perf_counter()
    settings = CertifySettings.build(settings, **options)
    _check_features(features)
    target = resolve(model, tuple(x0.shape), preprocessing=preprocessing, bounds=bounds, dtype=settings.dtype)
    x0 = x0.to(device=target.graph.device, dtype=target.graph.dtype)
    lo, hi = subset_boxes(x0, subsets, features=features, bounds=target.bounds)
    labels = as_labels(label, lo.shape[0], target.graph.device)
    margin = bound_margins(target, lo, hi, labels, settings)
    return _result(margin, settings.margin_tol, settings.method_for(target.graph), start)
