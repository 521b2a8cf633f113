"""The model under certification: its bound graph plus a plain forward pass for re-checks.

:func:`resolve` accepts an ``nn.Module``, an existing :class:`~l0tre.certify.graph.Graph`, a
:class:`Target`, or an :class:`l0tre.classifier.Classifier`-like object (anything with
``.model``, ``.preprocessing`` and ``.bounds``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from l0tre.certify.bounds import BoundOptions, lower_bounds, margin_spec
from l0tre.certify.graph import Graph, build_graph, eval_mode, normalisation_of

__all__ = ["Target", "resolve"]


@dataclass(frozen=True)
class Target:
    """A converted model.

    Attributes:
        graph: the bound-propagation graph (pixel-space input).
        module: the original module (for counterexample re-checks), if any.
        norm: the per-channel ``(mean, std)`` normalisation, if any.
        bounds: the valid pixel range ``(lo, hi)``.
    """

    graph: Graph
    module: nn.Module | None
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None
    bounds: tuple[float, float]

    @property
    def num_classes(self) -> int:
        return self.graph.output_shape[0]

    @property
    def model_dtype(self) -> torch.dtype:
        """The original module's floating type (the graph's without a module)."""
        if self.module is None:
            return self.graph.dtype
        return next((p.dtype for p in self.module.parameters() if p.is_floating_point()),
                    torch.float32)

    def logits(self, x: Tensor) -> Tensor:
        """Raw scores ``(N, K)`` of a plain forward pass of the original model in its own
        precision (the graph when there is none) on pixel-space ``x`` ``(N, C, H, W)``;
        differentiable. A dropped trailing softmax is not applied (argmax is unchanged)."""
        if self.module is None:
            return self.graph.forward(x)
        dtype = self.model_dtype
        x = x.to(device=self.graph.device, dtype=dtype)
        if self.norm is not None:
            mean = torch.tensor(self.norm[0], dtype=dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.norm[1], dtype=dtype, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        with eval_mode(self.module):
            out = self.module(x)
        if not isinstance(out, Tensor):
            raise TypeError(f"model output: expected a tensor, got {type(out).__name__}")
        return out

    def predict(self, x: Tensor) -> Tensor:
        """Labels ``(N,)`` from a plain forward pass of the original model."""
        with torch.no_grad():
            return self.logits(x).argmax(1)

    def margins(self, x: Tensor, labels: Tensor) -> Tensor:
        """``z_label - z_k`` ``(N, K)`` of the original model in its own precision
        (differentiable; label column 0). Used to *search* for counterexamples only."""
        z = self.logits(x)
        if self.graph.softmax_dropped == "softmax":
            z = torch.log(z.clamp_min(torch.finfo(z.dtype).tiny))
        return z.gather(1, labels.view(-1, 1).to(z.device)) - z

    def margin_bounds(self, lo: Tensor, hi: Tensor, labels: Tensor, opts: BoundOptions) -> Tensor:
        """Lower bounds ``(B, K)`` of the margins over the boxes; label column ``+inf``."""
        labels = labels.to(self.graph.device)
        k = self.num_classes
        b = labels.shape[0]
        spec = margin_spec(labels, k)  # (B, K, K); drop the all-zero label row
        others = torch.arange(k, device=labels.device).expand(b, k)
        others = others[others != labels.view(-1, 1)].view(b, k - 1)
        spec = spec.gather(1, others.unsqueeze(2).expand(b, k - 1, k))
        lb = lower_bounds(self.graph, lo, hi, spec, opts)
        out = lb.new_full((b, k), float("inf"))
        return out.scatter(1, others, lb)


def resolve(model: Any, input_shape: tuple[int, ...], *, preprocessing: Any = None,
            bounds: tuple[float, float] | None = None, dtype: torch.dtype = torch.float64,
            device: torch.device | str | None = None) -> Target:
    """Build (or reuse) a :class:`Target`; explicit ``preprocessing``/``bounds`` win over a
    classifier's own."""
    if isinstance(model, Target):
        return model
    module: nn.Module | None
    if isinstance(model, Graph):
        graph, module = model, None
        norm = None
        if preprocessing is not None:
            raise ValueError("preprocessing: a prebuilt Graph already contains its normalisation")
    else:
        classifier_like = hasattr(model, "model") and hasattr(model, "bounds")
        if not isinstance(model, nn.Module) and classifier_like:
            if preprocessing is None:
                preprocessing = getattr(model, "preprocessing", None)
            if bounds is None:
                b0, b1 = model.bounds
                bounds = (float(b0), float(b1))
            model = model.model
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model: expected an nn.Module, Graph or Classifier, got {type(model).__name__}")
        module = model
        norm = normalisation_of(preprocessing)
        graph = build_graph(model, input_shape, preprocessing=norm, dtype=dtype, device=device)
    if tuple(graph.input_shape) != tuple(input_shape):
        raise ValueError(f"x0: expected shape {graph.input_shape}, got {tuple(input_shape)}")
    if len(graph.output_shape) != 1:
        raise ValueError(
            f"model output: expected (N, K) scores, got per-sample shape {graph.output_shape}")
    lo, hi = bounds if bounds is not None else (0.0, 1.0)
    if not float(lo) < float(hi):
        raise ValueError(f"bounds: expected lo < hi, got {bounds}")
    return Target(graph, module, norm, (float(lo), float(hi)))
