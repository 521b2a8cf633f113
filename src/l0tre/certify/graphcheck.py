"""The build-time check that a converted graph computes what the model computes.

:func:`check_conversion` compares the graph with the model's own forward pass on random
probes. The two sides differ by rounding only (the graph usually computes in float64, the
model in its own type), so the check needs a tolerance that covers every rounding a faithful
conversion can produce and little more: a wrong translation (a lost bias, a padding off by
one, a swapped weight) changes the logits by far more. :func:`conversion_tolerance` derives
it from the dtypes of both sides and from the magnitudes of the values they round:

* **Local rounding** (first-order model, Higham, *Accuracy and Stability of Numerical
  Algorithms*, ch. 3). An affine node sums ``n`` products (its fan-in); each rounding in the
  sum is off by at most ``u_acc`` times a partial sum, itself at most ``Σ|w x|``, so the
  ``n`` roundings together act like ``√n · u_acc · (|W| |x| + |b|) · ξ`` with ``ξ`` a
  zero-mean sign (PyTorch sums float16 / bfloat16 products in float32: ``u_acc`` is the
  unit roundoff of the accumulator). The product and the bias addition are then stored in
  the node's dtype, ``u_store · |y|`` each; the (normalised) input is stored once. ReLU,
  max-pool and reshapes are exact.
* **Propagation.** The output error is, to first order, ``Σ J_node · δ_node`` with ``J`` the
  network's *actual* Jacobian (its weights and ReLU pattern at the probe). Bounding it with
  absolute weights, ``|W_L| ··· |W_1|``, is hopeless for deep networks (1e7 times too large
  on ``paper-mnist``); instead the graph is run with every node's local rounding injected as
  independent random signs, ``TRIALS`` times, and the root mean square of the output change
  estimates ``σ = ‖J · diag(β)‖₂`` per output (exactly, in expectation) without a Jacobian.
* **Tail.** For independent zero-mean errors bounded by ``β``, Hoeffding's inequality gives
  ``P(|Σ J δ| > λσ) ≤ 2 exp(-λ² / 2)``: ``λ = 6`` makes that ``3e-8`` per output. The
  sampled ``σ`` is at least half the true one (``ESTIMATE``), except with tiny probability,
  so ``tol = ESTIMATE · λ · RMS``.

Both sides round, so ``u`` is the sum of both sides' unit roundoffs. For a float32 model
against a float64 graph this gives about ``1e-4`` on ``paper-mnist``'s logits (the model's
real deviation is ``1e-6``); for float16 / bfloat16 models about ``1e-1``, their own noise.
Reduced-precision kernels (TF32 convolutions, cuDNN's default for float32 on Ampere and
newer GPUs: 10-bit mantissas) are *not* modelled: the model side always runs under
:func:`l0tre.arith.ieee_float32`, so certificates are about the IEEE float32 model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from l0tre.certify import ops as O
from l0tre.certify.types import UnsupportedLayerError

if TYPE_CHECKING:  # graph.py runs the check
    from l0tre.certify.graph import Graph

__all__ = ["ESTIMATE", "LAMBDA", "TRIALS", "check_conversion", "conversion_tolerance"]

#: tail factor of the rounding bound, estimate factor and number of sampled roundings
#: (module docstring)
LAMBDA = 6.0
ESTIMATE = 2.0
TRIALS = 16


def _unit_roundoff(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) / 2


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """What PyTorch sums products in: float64 for float64, float32 for the rest."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fan_in(op: O.Op) -> int:
    """Terms summed per output element (for a generic linear function: its input size per
    output element, exact for non-overlapping pools and reductions)."""
    if isinstance(op, O.LinearOp):
        return int(op.weight.shape[1])
    if isinstance(op, O.ConvOp):
        return int(op.weight[0].numel())
    if isinstance(op, O.AddOp):
        return len(op.coeffs)
    if isinstance(op, O.FunctionOp):
        return max(1, math.ceil(math.prod(op.in_shape) / max(1, math.prod(op.out_shape))))
    return 1


class _Rounding:
    """Injects one node's rounding errors as random signs (module docstring)."""

    def __init__(self, u_acc: float, u_store: float, device: torch.device) -> None:
        self.u_acc, self.u_store, self.device = u_acc, u_store, device
        self.gen = torch.Generator().manual_seed(0)

    def sign(self, y: Tensor) -> Tensor:
        bits = torch.randint(0, 2, y.shape, generator=self.gen)
        return (2 * bits - 1).to(device=y.device, dtype=y.dtype)

    def input(self, x: Tensor) -> Tensor:
        return x + self.u_store * x.abs() * self.sign(x)

    def node(self, op: O.Op, xs: list[Tensor]) -> Tensor:
        y = op.forward(*xs)
        if isinstance(op, (O.ReluOp, O.MaxPoolOp, O.ReshapeOp)):
            return y  # exact
        if isinstance(op, O.AffineOp):
            terms = op.abs_linear(xs[0].abs())
            stores = 1
            if op.bias is not None:
                terms, stores = terms + op.bias.abs(), 2
        else:
            assert isinstance(op, O.AddOp)
            terms = sum((abs(c) * v.abs() for c, v in zip(op.coeffs, xs, strict=True)), torch.zeros_like(y))
            stores = 1
        acc = math.sqrt(_fan_in(op)) * self.u_acc * terms * self.sign(y)
        store = sum((self.u_store * y.abs() * self.sign(y) for _ in range(stores)), torch.zeros_like(y))
        return y + acc + store


def _rounded_forward(graph: Graph, x: Tensor, rounding: _Rounding) -> Tensor:
    values: dict[int, Tensor] = {0: rounding.input(x)}
    for i, node in enumerate(graph.nodes):
        if node.op is not None:
            values[i] = rounding.node(node.op, [values[j] for j in node.inputs])
    return values[graph.output]


def conversion_tolerance(graph: Graph, x: Tensor, model_dtype: torch.dtype,
                         tail: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Largest difference ``(N, *output_shape)`` between the graph's outputs (after ``tail``,
    e.g. a softmax) and a faithful model's in ``model_dtype`` on the pixel-space inputs ``x``
    that rounding explains (module docstring)."""
    sides = (model_dtype, graph.dtype)  # both sides round
    u_acc = sum(_unit_roundoff(_accumulation_dtype(d)) for d in sides)
    u_store = sum(_unit_roundoff(d) for d in sides)
    post = tail if tail is not None else (lambda z: z)
    x = x.to(device=graph.device, dtype=graph.dtype)
    with torch.no_grad():
        clean = post(graph.forward(x))
        noisy = post(_rounded_forward(graph, x.repeat(TRIALS, *([1] * (x.dim() - 1))),
                                      _Rounding(u_acc, u_store, graph.device)))
    noisy = noisy.view(TRIALS, *clean.shape)
    rms = (noisy - clean).square().mean(0).sqrt()
    return ESTIMATE * LAMBDA * rms + u_store * clean.abs()


def check_conversion(graph: Graph, out: Any, pixel_probe: Tensor, model_dtype: torch.dtype) -> None:
    """Raise :class:`UnsupportedLayerError` unless ``graph`` reproduces the model's output
    ``out`` on ``pixel_probe`` up to :func:`conversion_tolerance`, and treats every sample of
    a batch on its own."""
    if not isinstance(out, Tensor):
        raise UnsupportedLayerError(f"model output: expected a tensor, got {type(out).__name__}")
    ref = out.to(graph.dtype)
    tail: Callable[[Tensor], Tensor] | None = None
    if graph.softmax_dropped == "softmax":
        tail = partial(F.softmax, dim=1)
    elif graph.softmax_dropped == "log_softmax":
        tail = lambda z: F.log_softmax(z, dim=1).clamp_min(-1e4)  # noqa: E731
        ref = ref.clamp_min(-1e4)
    got = graph.forward(pixel_probe) if tail is None else tail(graph.forward(pixel_probe))
    same_shape = got.shape == ref.shape
    tol = conversion_tolerance(graph, pixel_probe, model_dtype, tail) if same_shape else None
    if tol is None or bool(((got - ref).abs() > tol).any()):
        diff = (got - ref).abs().max().item() if same_shape else float("nan")
        allowed = float(tol.max()) if tol is not None else float("nan")
        raise UnsupportedLayerError(
            "graph conversion check failed: the converted graph disagrees with the model "
            f"(shapes {tuple(got.shape)} vs {tuple(ref.shape)}, max |diff| {diff:.3g}, rounding "
            f"explains at most {allowed:.3g}); some operation is not translated faithfully")
    single = graph.forward(pixel_probe[:1])
    both = graph.forward(pixel_probe)[:1]
    eps = torch.finfo(graph.dtype).eps
    if not torch.allclose(single, both, rtol=1e3 * eps, atol=1e3 * eps * (1.0 + float(both.abs().max()))):
        raise UnsupportedLayerError("graph conversion check failed: samples interact across the batch")
