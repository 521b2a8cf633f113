"""``bound_model``: output or margin bounds of a model over a batch of pixel-space boxes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from l0tre.certify.bounds import BoundOptions, lower_bounds, margin_spec
from l0tre.certify.target import resolve
from l0tre.classifier import ieee_float32

__all__ = ["bound_model"]


@ieee_float32()
def bound_model(
    model: Any,
    lo: Tensor,
    hi: Tensor,
    *,
    spec: Tensor | None = None,
    labels: Tensor | int | None = None,
    method: str = "crown",
    intermediate: str = "auto",
    preprocessing: Any = None,
    dtype: torch.dtype = torch.float64,
    max_memory: int = 1 << 30,
) -> tuple[Tensor, Tensor]:
    """Sound bounds ``lb ≤ g(x) ≤ ub`` for every ``x`` in the boxes ``[lo, hi]``.

    ``g`` is the model output ``f(x)`` ``(B, K)`` by default, ``spec · f(x)`` for a ``spec``
    ``(M, K)`` or ``(B, M, K)``, or the margins ``f_label(x) - f_k(x)`` ``(B, K)`` when
    ``labels`` are given.

    Args:
        model: ``nn.Module`` (inputs after normalisation), prebuilt Graph, or Classifier.
        lo, hi: ``(B, C, H, W)`` pixel-space boxes.
        spec, labels: what to bound (at most one of them).
        method: ``"ibp"``, ``"forward"``, ``"crown"`` or ``"hybrid"``; ``intermediate``
            ``"ibp"``, ``"forward"``, ``"crown"`` or ``"auto"`` (see :mod:`l0tre.certify.bounds`).
        preprocessing: per-channel ``(mean, std)`` in front of the model.
        dtype: computation type; ``max_memory``: bytes per bound pass (chunking).

    Returns:
        ``(lb, ub)``, each ``(B, M)`` on the model's device (``M = K`` for outputs/margins).

    Raises:
        UnsupportedLayerError: the model has a layer that cannot be bounded; also for output
            bounds of a model whose trailing softmax was dropped (margins are fine).
    """
    if lo.dim() < 2 or lo.shape != hi.shape:
        raise ValueError(f"lo, hi: expected two (B, ...) tensors of the same shape, got "
                         f"{tuple(lo.shape)} and {tuple(hi.shape)}")
    if spec is not None and labels is not None:
        raise ValueError("give spec or labels, not both")
    target = resolve(model, tuple(lo.shape[1:]), preprocessing=preprocessing, dtype=dtype)
    graph = target.graph
    b, k = lo.shape[0], target.num_classes
    if labels is not None:
        lab = torch.as_tensor(labels, dtype=torch.int64, device=graph.device)
        lab = lab.expand(b) if lab.dim() == 0 else lab
        spec = margin_spec(lab, k)
    elif spec is None:
        if graph.softmax_dropped is not None:
            from l0tre.certify.types import UnsupportedLayerError

            raise UnsupportedLayerError(
                f"output bounds of a model ending in {graph.softmax_dropped}: only margins "
                "(labels=...) or specifications are supported")
        spec = torch.eye(k, dtype=graph.dtype, device=graph.device)
    spec = spec.to(device=graph.device, dtype=graph.dtype)
    both = torch.cat([spec, -spec], dim=-2)
    opts = BoundOptions(method=method, intermediate=intermediate, max_memory=max_memory)
    out = lower_bounds(graph, lo, hi, both, opts)
    m = spec.shape[-2]
    return out[:, :m], -out[:, m:]
