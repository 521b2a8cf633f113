"""Typed, validated options of an evaluation (validated once, at the API boundary)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..classifier import Classifier
from ..execution.memory import DEFAULT_MAX_MEMORY
from ..validate import positive_float, positive_int
from .features import FeatureKind
from .grid import check_epsilon

__all__ = ["EvaluateOptions", "check_inputs", "check_labels"]

DEFAULT_MAX_EVALUATIONS = 10**10


@dataclass(frozen=True)
class EvaluateOptions:
    """Options of :func:`l0tre.evaluate` (see its docstring)."""

    epsilon: float = 0.5
    t_max: int = 2
    features: FeatureKind = FeatureKind.PIXEL
    batch_size: int | None = None
    max_memory: int = DEFAULT_MAX_MEMORY
    time_budget: float | None = None
    report_every: float = 5.0
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS
    top_k: int | None = None

    @staticmethod
    def build(
        *,
        epsilon: object = 0.5,
        t_max: object = 2,
        features: object = "pixel",
        batch_size: object = None,
        max_memory: object = DEFAULT_MAX_MEMORY,
        time_budget: object = None,
        report_every: object = 5.0,
        max_evaluations: object = DEFAULT_MAX_EVALUATIONS,
        top_k: object = None,
    ) -> EvaluateOptions:
        check_epsilon(epsilon)
        if not isinstance(features, (str, FeatureKind)):
            raise TypeError(f"features: expected 'pixel' or 'element', got {type(features).__name__}")
        return EvaluateOptions(
            epsilon=float(epsilon),  # type: ignore[arg-type]
            t_max=positive_int("t_max", t_max),
            features=FeatureKind.parse(features),
            batch_size=None if batch_size is None else positive_int("batch_size", batch_size),
            max_memory=positive_int("max_memory", max_memory),
            time_budget=None if time_budget is None else positive_float("time_budget", time_budget),
            report_every=positive_float("report_every", report_every),
            max_evaluations=positive_int("max_evaluations", max_evaluations),
            top_k=None if top_k is None else positive_int("top_k", top_k),
        )

    @property
    def steps(self) -> int:
        return check_epsilon(self.epsilon)


def check_inputs(x: object, model: Classifier) -> torch.Tensor:
    """Validate ``x``: a float ``(N, C, H, W)`` tensor or NumPy array (converted to a tensor of
    the same dtype, a copy), finite, inside the model's bounds."""
    if isinstance(x, np.ndarray):
        x = _from_numpy("x", x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor or NumPy array of shape (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x: expected shape (N, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        hint = " (scale integer images to the model bounds first, e.g. x / 255)" if x.dtype == torch.uint8 else ""
        raise TypeError(f"x: expected a floating-point tensor in the model bounds, got dtype {x.dtype}{hint}")
    if x.shape[0] == 0:
        raise ValueError("x: expected at least one input, got an empty batch (N = 0)")
    if x.numel() == 0:
        raise ValueError(f"x: expected non-empty images, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"x: expected finite values, got {bad} NaN/Inf entries")
    lo, hi = model.bounds
    xmin, xmax = float(x.min()), float(x.max())
    if xmin < lo or xmax > hi:
        raise ValueError(
            f"x: expected values inside the model bounds [{lo}, {hi}], got range [{xmin}, {xmax}]"
        )
    if model.input_shape is not None and tuple(x.shape[1:]) != tuple(model.input_shape):
        raise ValueError(
            f"x: expected images of shape {tuple(model.input_shape)} for this model, "
            f"got {tuple(x.shape[1:])}"
        )
    return x


def check_labels(labels: object, n: int) -> torch.Tensor | None:
    """Validate ``labels``: ``None`` or ``(n,)`` integers (a tensor, NumPy array or sequence);
    returned as an int64 CPU tensor."""
    if labels is None:
        return None
    if isinstance(labels, np.ndarray):
        labels = _from_numpy("labels", labels)
    if not isinstance(labels, torch.Tensor):
        try:
            labels = torch.as_tensor(labels)
        except Exception as exc:  # noqa: BLE001
            raise TypeError(f"labels: expected integer labels of shape ({n},), got {type(labels).__name__}") from exc
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1:
        raise TypeError(
            f"labels: expected a 1-D integer tensor of shape ({n},), got {labels.dtype} {tuple(labels.shape)}"
        )
    if labels.shape[0] != n:
        raise ValueError(f"labels: expected shape ({n},) to match x, got {tuple(labels.shape)}")
    return labels.to(torch.int64).cpu()


def _from_numpy(name: str, a: np.ndarray) -> torch.Tensor:
    """A tensor copy of the NumPy array ``a`` (any strides); ``TypeError`` naming ``name`` for a
    dtype torch has no tensor type for (e.g. strings, objects)."""
    try:
        return torch.from_numpy(np.array(a, copy=True, order="C"))
    except TypeError as exc:
        raise TypeError(f"{name}: expected a numeric NumPy array, got dtype {a.dtype}") from exc
