"""The context of one traced ``torch.fx`` call being converted, and the layer builders that the
module and the functional forms of a layer share (used by :mod:`.fxconv`, :mod:`.fxfunctions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from l0tre.certify import ops as O
from l0tre.certify.types import UnsupportedLayerError

__all__ = ["CallContext", "Result", "pair"]

#: ``(op, input indices)``; an ``int`` (an alias of an existing graph node); ``"softmax"`` /
#: ``"log_softmax"`` (a removable trailing softmax); ``None`` (a constant, kept in ``consts``)
Result = tuple[O.Op, tuple[int, ...]] | int | str | None


def pair(v: Any) -> tuple[int, int]:
    """An int or a sequence as a ``(first, last)`` pair of ints."""
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1])) if len(v) else (0, 0)
    return (int(v), int(v))


class CallContext:
    """One tensor-valued traced node ``n`` with what its conversion needs: the recorded
    ``values`` of every node, the graph ``index`` of the tensor nodes, the ``consts``, and the
    graph's ``dtype`` / ``device``; ``where`` names the node in error messages."""

    def __init__(self, gm: fx.GraphModule, n: fx.Node, values: dict[fx.Node, Any],
                 index: dict[fx.Node, int], consts: dict[fx.Node, Any], dtype: torch.dtype,
                 device: torch.device, where: str, out_shape: O.Shape) -> None:
        self.gm, self.n, self.values, self.index, self.consts = gm, n, values, index, consts
        self.dtype, self.device, self.where, self.out_shape = dtype, device, where, out_shape

    # -- arguments -------------------------------------------------------------------------
    def shape(self, m: fx.Node) -> O.Shape:
        return tuple(self.values[m].shape[1:])

    def main_input(self) -> fx.Node:
        """The first positional argument, which must be the only graph tensor among the args."""
        x = self.n.args[0] if self.n.args else self.n.kwargs.get("input")
        if not isinstance(x, fx.Node) or x not in self.index:
            raise UnsupportedLayerError(f"{self.where}: its first argument is not a graph tensor")
        others = []
        fx.node.map_arg((self.n.args[1:], self.n.kwargs),
                        lambda m: others.append(m) or m)  # type: ignore[func-returns-value]
        if any(m in self.index for m in others):
            raise UnsupportedLayerError(f"unsupported {self.where}: several tensor inputs")
        return x

    def value(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            if a in self.index:
                raise UnsupportedLayerError(f"unsupported {self.where}: tensor used as a constant")
            return self.consts[a]
        return a

    def const(self, a: Any, shape: O.Shape) -> Tensor:
        """A constant broadcastable to the per-sample ``shape`` (leading 1-dims dropped). A
        Python number takes the dtype of the node's result first, as in the model's own
        arithmetic (``x + 0.1`` adds float32(0.1) to a float32 tensor, the exact 0.1 to a
        float64 one)."""
        value = self.value(a)
        if isinstance(value, (int, float)):
            value = torch.tensor(value, dtype=self.values[self.n].dtype)
        c = torch.as_tensor(value).detach().to(device=self.device, dtype=self.dtype)
        while c.dim() > len(shape):
            if c.shape[0] != 1:
                raise UnsupportedLayerError(f"{self.where}: the constant mixes samples")
            c = c[0]
        if tuple(torch.broadcast_shapes(c.shape, shape)) != tuple(shape):
            raise UnsupportedLayerError(f"{self.where}: the constant broadcasts the tensor")
        return c

    def param(self, t: Tensor | None) -> Tensor | None:
        return None if t is None else t.detach().to(device=self.device, dtype=self.dtype)

    def kwargs(self, names: Sequence[str], defaults: Sequence[Any]) -> dict[str, Any]:
        out = dict(zip(names, defaults, strict=True))
        for name, a in zip(names, self.n.args[1:], strict=False):
            out[name] = self.value(a)
        for k, a in self.n.kwargs.items():
            out[k] = self.value(a)
        return out

    # -- layers shared by the module and the functional forms ------------------------------
    def conv_padding(self, padding: Any, kernel: Any, dilation: Any) -> tuple[int, int]:
        if isinstance(padding, str):
            if padding == "valid":
                return (0, 0)
            k, d = pair(kernel), pair(dilation)
            total = [d[i] * (k[i] - 1) for i in range(2)]
            if any(t % 2 for t in total):
                raise UnsupportedLayerError(f"unsupported {self.where}: asymmetric 'same' padding")
            return (total[0] // 2, total[1] // 2)
        return pair(padding)

    def maxpool(self, xi: int, in_shape: O.Shape, kernel: Any, stride: Any, padding: Any,
                dilation: Any, ceil_mode: bool) -> Result:
        if len(in_shape) != 3:
            raise UnsupportedLayerError(f"unsupported {self.where}: expected (N, C, H, W) input")
        k = pair(kernel)
        s = pair(stride) if stride is not None and stride != [] and stride != () else k
        op = O.MaxPoolOp(k, s, pair(padding), pair(dilation), bool(ceil_mode), in_shape,
                         self.out_shape, self.device)
        return op, (xi,)

    def batch_norm(self, xi: int, shape: O.Shape, mean: Tensor, var: Tensor, weight: Tensor | None,
                   bias: Tensor | None, eps: float) -> Result:
        m, v = self.param(mean), self.param(var)
        assert m is not None and v is not None
        w = self.param(weight) if weight is not None else torch.ones_like(m)
        b = self.param(bias) if bias is not None else torch.zeros_like(m)
        assert w is not None and b is not None
        scale = w / torch.sqrt(v + eps)
        shift = b - m * scale
        view = (-1,) + (1,) * (len(shape) - 1)
        return O.ScaleShiftOp(scale.view(view), shift.view(view), shape), (xi,)

    def reshape_to(self, xi: int, in_shape: O.Shape) -> Result:
        if in_shape == self.out_shape:
            return xi
        return O.ReshapeOp((in_shape,), self.out_shape), (xi,)

    def softmax_tail(self, allow: bool, kind: str, dim: Any) -> Result:
        if not allow or len(self.out_shape) != 1 or dim not in (1, -1, None):
            raise UnsupportedLayerError(
                f"unsupported {self.where}: softmax is only supported as the last operation over "
                "the class dimension")
        return kind
