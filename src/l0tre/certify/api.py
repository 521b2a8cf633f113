"""``bound_model``: output or margin bounds of a model over a batch of pixel-space boxes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from l0tre.certify.bounds import lower_bounds, margin_spec
from l0tre.certify.settings import CertifySettings
from l0tre.certify.target import resolve
from l0tre.certify.types import UnsupportedLayerError
from l0tre.classifier import ieee_float32
from l0tre.host_memory import keep_freed_memory

__all__ = ["bound_model"]


@ieee_float32()
def bound_model(model: Any, lo: Tensor, hi: Tensor, *, spec: Tensor | None = None, labels: Tensor | int | None = None,
                preprocessing: Any = None, settings: CertifySettings | None = None,
                **options: Any) -> tuple[Tensor, Tensor]:
    """Sound bounds ``lb ≤ g(x) ≤ ub`` for every ``x`` in the boxes ``[lo, hi]``.

    ``g`` is the model output ``f(x)`` ``(B, K)`` by default, ``spec · f(x)`` for a ``spec``
    ``(M, K)`` or ``(B, M, K)``, or the margins ``f_label(x) - f_k(x)`` ``(B, K)`` when
    ``labels`` are given.

    Args:
        model: ``nn.Module`` (inputs after normalisation), prebuilt Graph, or Classifier.
        lo, hi: ``(B, C, H, W)`` pixel-space boxes.
        spec, labels: what to bound (at most one of them).
        preprocessing: per-channel ``(mean, std)`` in front of the model.
        settings: :class:`~l0tre.certify.settings.CertifySettings` (here: ``method``,
            ``intermediate``, ``dtype``, ``max_memory``: bytes per bound pass); ``options``:
            any of its fields, applied on top.

    Returns:
        ``(lb, ub)``, each ``(B, M)`` on the model's device (``M = K`` for outputs/margins).

    Raises:
        UnsupportedLayerError: the model has a layer that cannot be bounded; also for output
            bounds of a model whose trailing softmax was dropped (margins are fine).
    """
    keep_freed_memory()
    settings = CertifySettings.build(settings, **options)
    if lo.dim() < 2 or lo.shape != hi.shape:
        raise ValueError(f"lo, hi: expected two (B, ...) tensors of the same shape, got "
                         f"{tuple(lo.shape)} and {tuple(hi.shape)}")
    if spec is not None and labels is not None:
        raise ValueError("give spec or labels, not both")
    target = resolve(model, tuple(lo.shape[1:]), preprocessing=preprocessing, dtype=settings.dtype)
    graph = target.graph
    b, k = lo.shape[0], target.num_classes
    if labels is not None:
        lab = torch.as_tensor(labels, dtype=torch.int64, device=graph.device)
        lab = lab.expand(b) if lab.dim() == 0 else lab
        spec = margin_spec(lab, k)
    elif spec is None:
        if graph.softmax_dropped is not None:
            raise UnsupportedLayerError(
                f"output bounds of a model ending in {graph.softmax_dropped}: only margins "
                "(labels=...) or specifications are supported")
        spec = torch.eye(k, dtype=graph.dtype, device=graph.device)
    spec = spec.to(device=graph.device, dtype=graph.dtype)
    both = torch.cat([spec, -spec], dim=-2)
    out = lower_bounds(graph, lo, hi, both, settings.bound_options(graph))
    m = spec.shape[-2]
    return out[:, :m], -out[:, m:]
