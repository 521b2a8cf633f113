"""The operations of a bound-propagation graph.

Every operation works on batched tensors ``(N, *shape)`` where ``shape`` is the per-sample
shape (no batch dimension). Affine operations expose their linear part ``L`` in the forms
the bound algorithms need:

* ``linear(x) = L x`` and ``forward(x) = L x + b``,
* ``abs_linear(r) = |L| r`` (interval radius propagation),
* ``pos_neg(p, n) = L⁺ p + L⁻ n`` (forward-mode linear bounds),
* ``backward(a) = Lᵀ a`` (backward / CROWN mode) and ``bias_dot(a) = <a, b>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AddOp",
    "AffineOp",
    "ConvOp",
    "FunctionOp",
    "LinearOp",
    "MaxPoolOp",
    "Op",
    "ReluOp",
    "ReshapeOp",
    "ScaleShiftOp",
    "Shape",
]

Shape = tuple[int, ...]


class Op:
    """Base class. ``in_shapes``: per-sample shapes of the inputs; ``out_shape``: output."""

    def __init__(self, in_shapes: tuple[Shape, ...], out_shape: Shape) -> None:
        self.in_shapes = tuple(tuple(int(d) for d in s) for s in in_shapes)
        self.out_shape = tuple(int(d) for d in out_shape)

    @property
    def in_shape(self) -> Shape:
        """The (first) input's per-sample shape."""
        return self.in_shapes[0]

    def forward(self, *xs: Tensor) -> Tensor:
        """Concrete evaluation ``(N, *in) → (N, *out)``."""
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


class AffineOp(Op):
    """A single-input affine map ``x ↦ L x + b``; subclasses implement the linear part."""

    bias: Tensor | None = None  # broadcastable to ``out_shape`` (no batch dimension)

    def linear(self, x: Tensor) -> Tensor:
        """``L x``: ``(N, *in) → (N, *out)``."""
        raise NotImplementedError

    def abs_linear(self, x: Tensor) -> Tensor:
        """``|L| x``: ``(N, *in) → (N, *out)``."""
        raise NotImplementedError

    def pos_neg(self, p: Tensor, n: Tensor) -> Tensor:
        """``L⁺ p + L⁻ n`` (``L⁺ = max(L, 0)``, ``L⁻ = min(L, 0)``): ``(N, *in) → (N, *out)``."""
        raise NotImplementedError

    def backward(self, a: Tensor) -> Tensor:
        """``Lᵀ a``: ``(N, *out) → (N, *in)``."""
        raise NotImplementedError

    def bias_dot(self, a: Tensor) -> Tensor:
        """``<a, b>`` per row: ``(N, *out) → (N,)`` (zeros when there is no bias)."""
        if self.bias is None:
            return a.new_zeros(a.shape[0])
        return (a * self.bias).reshape(a.shape[0], -1).sum(1)

    def forward(self, *xs: Tensor) -> Tensor:
        y = self.linear(xs[0])
        return y if self.bias is None else y + self.bias

    def _keep_signs(self, w: Tensor) -> None:
        """Store ``|w|``, ``w⁺`` and ``w⁻`` for ``abs_linear`` and ``pos_neg``."""
        self._abs, self._pos, self._neg = w.abs(), w.clamp(min=0), w.clamp(max=0)


class LinearOp(AffineOp):
    """``y = x Wᵀ + b`` on the last dimension; ``weight`` ``(O, I)``, ``bias`` ``(O,)``."""

    def __init__(self, weight: Tensor, bias: Tensor | None, in_shape: Shape,
                 out_shape: Shape) -> None:
        super().__init__((in_shape,), out_shape)
        self.weight = weight
        self.bias = bias
        self._keep_signs(weight)

    def linear(self, x: Tensor) -> Tensor:
        return x @ self.weight.T

    def abs_linear(self, x: Tensor) -> Tensor:
        return x @ self._abs.T

    def pos_neg(self, p: Tensor, n: Tensor) -> Tensor:
        return p @ self._pos.T + n @ self._neg.T

    def backward(self, a: Tensor) -> Tensor:
        return a @ self.weight

    def bias_dot(self, a: Tensor) -> Tensor:
        if self.bias is None:
            return a.new_zeros(a.shape[0])
        return (a @ self.bias).reshape(a.shape[0], -1).sum(1)


class ConvOp(AffineOp):
    """2-D convolution with zero padding; ``weight`` ``(O, I/groups, kh, kw)``."""

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
        in_shape: Shape,
        out_shape: Shape,
    ) -> None:
        super().__init__((in_shape,), out_shape)
        self.weight = weight
        self.bias = None if bias is None else bias.view(-1, 1, 1)
        self._bias_vec = bias
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self._keep_signs(weight)
        ks = (int(weight.shape[-2]), int(weight.shape[-1]))
        full = [
            (out_shape[1 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (ks[i] - 1) + 1
            for i in range(2)
        ]
        self.output_padding = (in_shape[1] - full[0], in_shape[2] - full[1])

    def cropped(self, in_shape: Shape, out_shape: Shape) -> ConvOp:
        """The same convolution without padding on an input crop ``in_shape`` that yields
        exactly ``out_shape`` (weights shared)."""
        op = ConvOp.__new__(ConvOp)
        AffineOp.__init__(op, (in_shape,), out_shape)
        op.weight, op.bias, op._bias_vec = self.weight, self.bias, self._bias_vec
        op.stride, op.padding, op.dilation, op.groups = self.stride, (0, 0), self.dilation, \
            self.groups
        op._abs, op._pos, op._neg = self._abs, self._pos, self._neg
        ks = (int(self.weight.shape[-2]), int(self.weight.shape[-1]))
        full = [(out_shape[1 + i] - 1) * self.stride[i] + self.dilation[i] * (ks[i] - 1) + 1
                for i in range(2)]
        op.output_padding = (in_shape[1] - full[0], in_shape[2] - full[1])
        return op

    def _conv(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    def linear(self, x: Tensor) -> Tensor:
        return self._conv(x, self.weight)

    def abs_linear(self, x: Tensor) -> Tensor:
        return self._conv(x, self._abs)

    def pos_neg(self, p: Tensor, n: Tensor) -> Tensor:
        return self._conv(p, self._pos) + self._conv(n, self._neg)

    def backward(self, a: Tensor) -> Tensor:
        return F.conv_transpose2d(
            a, self.weight, None, self.stride, self.padding, self.output_padding, self.groups,
            self.dilation,
        )

    def bias_dot(self, a: Tensor) -> Tensor:
        if self._bias_vec is None:
            return a.new_zeros(a.shape[0])
        return a.sum((-2, -1)) @ self._bias_vec


class ScaleShiftOp(AffineOp):
    """Element-wise ``y = x * scale + shift``; ``scale``/``shift`` broadcast to the shape.

    Covers eval-mode batch norm, input normalisation and arithmetic with constants.
    """

    def __init__(self, scale: Tensor, shift: Tensor | None, shape: Shape) -> None:
        super().__init__((shape,), shape)
        self.scale = scale
        self.bias = shift
        self._keep_signs(scale)

    def linear(self, x: Tensor) -> Tensor:
        return x * self.scale

    def abs_linear(self, x: Tensor) -> Tensor:
        return x * self._abs

    def pos_neg(self, p: Tensor, n: Tensor) -> Tensor:
        return p * self._pos + n * self._neg

    def backward(self, a: Tensor) -> Tensor:
        return a * self.scale


class ReshapeOp(AffineOp):
    """A batch-preserving reshape (view, flatten, squeeze, identity)."""

    def linear(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.out_shape)

    def abs_linear(self, x: Tensor) -> Tensor:
        return self.linear(x)

    def pos_neg(self, p: Tensor, n: Tensor) -> Tensor:
        return self.linear(p)

    def backward(self, a: Tensor) -> Tensor:
        return a.reshape(a.shape[0], *self.in_shape)


class FunctionOp(AffineOp):
    """A per-sample affine function with a *non-negative* linear part (slicing, padding,
    average pooling, permutes, means), given as a callable ``fn``.

    ``backward`` uses the vector-Jacobian product of ``fn`` (exact for affine maps).
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], in_shape: Shape, out_shape: Shape,
                 bias: Tensor | None, label: str) -> None:
        super().__init__((in_shape,), out_shape)
        self.fn = fn
        self.bias = bias
        self.label = label

    def describe(self) -> str:
        return f"FunctionOp({self.label})"

    def linear(self, x: Tensor) -> Tensor:
        y = self.fn(x)
        return y if self.bias is None else y - self.bias

    def abs_linear(self, x: Tensor) -> Tensor:
        return self.linear(x)

    def pos_neg(self, p: Tensor, n: Tensor) -> Tensor:
        return self.linear(p)

    def forward(self, *xs: Tensor) -> Tensor:
        return self.fn(xs[0])

    def backward(self, a: Tensor) -> Tensor:
        zero = a.new_zeros((a.shape[0], *self.in_shape))
        vjp_fn = torch.func.vjp(self.linear, zero)[1]
        grad: Tensor = vjp_fn(a.contiguous())[0]
        return grad


class AddOp(Op):
    """``y = Σ_i c_i x_i`` of graph tensors of identical shape."""

    def __init__(self, coeffs: tuple[float, ...], shape: Shape) -> None:
        super().__init__(tuple(shape for _ in coeffs), shape)
        self.coeffs = tuple(float(c) for c in coeffs)

    def forward(self, *xs: Tensor) -> Tensor:
        out = xs[0] * self.coeffs[0] if self.coeffs[0] != 1.0 else xs[0]
        for c, x in zip(self.coeffs[1:], xs[1:], strict=True):
            out = out + c * x
        return out


class ReluOp(Op):
    """``y = max(x, 0)``."""

    def __init__(self, shape: Shape) -> None:
        super().__init__((shape,), shape)

    def forward(self, *xs: Tensor) -> Tensor:
        return F.relu(xs[0])


class MaxPoolOp(Op):
    """2-D max pooling ``(C, H, W) → (C, Ho, Wo)``.

    ``index_map`` ``(kh*kw, Ho*Wo)`` holds, for every window slot, the flat input position
    ``h*W + w`` it reads, or ``H*W`` for a padded slot (read as ``-inf``).
    """

    def __init__(
        self,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        ceil_mode: bool,
        in_shape: Shape,
        out_shape: Shape,
        device: torch.device,
    ) -> None:
        super().__init__((in_shape,), out_shape)
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode
        _, h, w = in_shape
        _, ho, wo = out_shape
        oh = torch.arange(ho, device=device).view(1, ho, 1)
        ow = torch.arange(wo, device=device).view(1, 1, wo)
        ki = torch.arange(kernel[0], device=device).repeat_interleave(kernel[1]).view(-1, 1, 1)
        kj = torch.arange(kernel[1], device=device).repeat(kernel[0]).view(-1, 1, 1)
        hh = oh * stride[0] - padding[0] + ki * dilation[0]
        ww = ow * stride[1] - padding[1] + kj * dilation[1]
        valid = (hh >= 0) & (hh < h) & (ww >= 0) & (ww < w)
        self.index_map = torch.where(valid, hh * w + ww, torch.full_like(hh, h * w)).reshape(
            kernel[0] * kernel[1], ho * wo
        )

    def forward(self, *xs: Tensor) -> Tensor:
        return F.max_pool2d(xs[0], self.kernel, self.stride, self.padding, self.dilation,
                            self.ceil_mode)

    def windows(self, t: Tensor) -> Tensor:
        """``(N, C, H, W) → (N, C, kh*kw, Ho*Wo)``: the window values, ``-inf`` when padded."""
        flat = t.flatten(2)
        fill = flat.new_full((flat.shape[0], flat.shape[1], 1), -math.inf)
        return torch.cat([flat, fill], dim=2)[:, :, self.index_map]
