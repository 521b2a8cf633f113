"""Map one traced ``torch.fx`` node onto a graph operation (used by :mod:`.graph`).

:func:`convert_call` returns an ``(op, input indices)`` pair, an ``int`` (the node is an
alias of an existing graph node: identity, dropout), the string ``"softmax"`` /
``"log_softmax"`` for a removable trailing softmax, or ``None`` when the node is a constant
computed from constants only (its value is stored in ``consts``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from l0tre.certify import ops as O
from l0tre.certify.types import UnsupportedLayerError

__all__ = ["convert_call"]

_RELU: set[Any] = {F.relu, torch.relu, torch.relu_, "relu", "relu_"}
_ADD: set[Any] = {operator.add, operator.iadd, torch.add, "add", "add_"}
_SUB: set[Any] = {operator.sub, operator.isub, torch.sub, "sub", "sub_"}
_MUL: set[Any] = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
_DIV: set[Any] = {operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div",
                  "div_", "true_divide"}
_NEG: set[Any] = {operator.neg, torch.neg, "neg"}
_RESHAPE: set[Any] = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, "view",
                      "reshape", "flatten", "contiguous", "squeeze", "unsqueeze", "view_as",
                      "reshape_as"}
_IDENTITY: set[Any] = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                       torch.clone, "clone", "detach"}
_NONNEG: set[Any] = {operator.getitem, F.pad, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
                     F.adaptive_avg_pool2d, torch.mean, "mean", torch.permute, "permute",
                     torch.transpose, "transpose"}
_SOFTMAX: set[Any] = {F.softmax, torch.softmax, "softmax"}
_LOG_SOFTMAX: set[Any] = {F.log_softmax, torch.log_softmax, "log_softmax"}
_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                    nn.FeatureAlphaDropout, nn.Identity)
_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)

Result = tuple[O.Op, tuple[int, ...]] | int | str | None


def _describe(gm: fx.GraphModule, n: fx.Node) -> str:
    if n.op == "call_module":
        mod = gm.get_submodule(str(n.target))
        return f"layer {n.target!r} ({type(mod).__name__})"
    name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", repr(n.target))
    return f"operation {n.name!r} ({name})"


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1])) if len(v) else (0, 0)
    return (int(v), int(v))


def convert_call(
    gm: fx.GraphModule,
    n: fx.Node,
    values: dict[fx.Node, Any],
    index: dict[fx.Node, int],
    consts: dict[fx.Node, Any],
    nodes: Sequence[Any],
    dtype: torch.dtype,
    device: torch.device,
    allow_softmax: bool,
) -> Result:
    """Convert the tensor-valued node ``n``; see the module docstring for the result."""
    where = _describe(gm, n)
    flat: list[fx.Node] = []
    fx.node.map_arg((n.args, n.kwargs), lambda m: flat.append(m) or m)  # type: ignore[func-returns-value]
    tensor_args = [m for m in flat if m in index]
    if not tensor_args:  # a constant computed from constants (e.g. a reshaped buffer)
        consts[n] = values[n]
        return None
    probe_batch = next(v for k, v in values.items() if k.op == "placeholder").shape[0]
    out_val: Tensor = values[n]
    if out_val.dim() == 0 or out_val.shape[0] != probe_batch:
        raise UnsupportedLayerError(f"{where} changes the batch dimension")
    out_shape = tuple(out_val.shape[1:])
    ctx = _Ctx(gm, n, values, index, consts, dtype, device, where, out_shape)
    if n.op == "call_module":
        return ctx.module(gm.get_submodule(str(n.target)), allow_softmax)
    target: Any = n.target
    if target in _SOFTMAX or target in _LOG_SOFTMAX:
        return ctx.softmax(allow_softmax, "softmax" if target in _SOFTMAX else "log_softmax")
    if target in _RELU:
        x = ctx.main_input()
        return O.ReluOp(ctx.shape(x)), (index[x],)
    if target in _ADD or target in _SUB:
        return ctx.add_sub(sub=target in _SUB)
    if target in _MUL or target in _DIV or target in _NEG:
        return ctx.mul_div("mul" if target in _MUL else "div" if target in _DIV else "neg")
    if target in _RESHAPE:
        return ctx.reshape()
    if target in _IDENTITY:
        x = ctx.main_input()
        if ctx.shape(x) != out_shape:
            raise UnsupportedLayerError(f"{where}: identity changed the shape")
        return index[x]
    if target is F.linear:
        return ctx.f_linear()
    if target is F.conv2d:
        return ctx.f_conv2d()
    if target is F.max_pool2d or getattr(target, "__name__", "") == "max_pool2d" or \
            target == "max_pool2d":
        return ctx.f_max_pool2d()
    if target is F.batch_norm:
        return ctx.f_batch_norm()
    if target in _NONNEG:
        return ctx.function()
    raise UnsupportedLayerError(f"unsupported {where}")


class _Ctx:
    def __init__(self, gm: fx.GraphModule, n: fx.Node, values: dict[fx.Node, Any],
                 index: dict[fx.Node, int], consts: dict[fx.Node, Any], dtype: torch.dtype,
                 device: torch.device, where: str, out_shape: O.Shape) -> None:
        self.gm, self.n, self.values, self.index, self.consts = gm, n, values, index, consts
        self.dtype, self.device, self.where, self.out_shape = dtype, device, where, out_shape

    # -- helpers ---------------------------------------------------------------------------
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
        """A constant broadcastable to the per-sample ``shape`` (leading 1-dims dropped)."""
        c = torch.as_tensor(self.value(a)).detach().to(device=self.device, dtype=self.dtype)
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

    # -- modules ---------------------------------------------------------------------------
    def module(self, mod: nn.Module, allow_softmax: bool) -> Result:
        x = self.main_input()
        xi, in_shape, out_shape = self.index[x], self.shape(x), self.out_shape
        if isinstance(mod, nn.Linear):
            w, b = self.param(mod.weight), self.param(mod.bias)
            assert w is not None
            return O.LinearOp(w, b, in_shape, out_shape), (xi,)
        if isinstance(mod, nn.Conv2d):
            if mod.padding_mode != "zeros":
                raise UnsupportedLayerError(
                    f"unsupported {self.where}: padding_mode={mod.padding_mode!r}")
            pad = self._conv_padding(mod.padding, mod.kernel_size, mod.dilation)
            w = self.param(mod.weight)
            assert w is not None
            return O.ConvOp(w, self.param(mod.bias), _pair(mod.stride), pad, _pair(mod.dilation),
                            mod.groups, in_shape, out_shape), (xi,)
        if isinstance(mod, nn.ReLU):
            return O.ReluOp(in_shape), (xi,)
        if isinstance(mod, nn.MaxPool2d):
            if mod.return_indices:
                raise UnsupportedLayerError(f"unsupported {self.where}: return_indices=True")
            return self._maxpool(xi, in_shape, mod.kernel_size, mod.stride, mod.padding,
                                 mod.dilation, mod.ceil_mode)
        if isinstance(mod, _POOL_MODULES):
            return self._function(x, mod, type(mod).__name__)
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            if mod.running_mean is None or mod.running_var is None:
                raise UnsupportedLayerError(f"unsupported {self.where}: no running statistics")
            return self._bn(xi, in_shape, mod.running_mean, mod.running_var, mod.weight, mod.bias,
                            mod.eps)
        if isinstance(mod, (nn.Flatten, nn.Unflatten)):
            return self._reshape(xi, in_shape)
        if isinstance(mod, _DROPOUT_MODULES):
            return xi
        if isinstance(mod, (nn.Softmax, nn.LogSoftmax)):
            kind = "softmax" if isinstance(mod, nn.Softmax) else "log_softmax"
            dim = mod.dim
            return self._softmax(allow_softmax, kind, dim)
        raise UnsupportedLayerError(f"unsupported {self.where}")

    def _conv_padding(self, padding: Any, kernel: Any, dilation: Any) -> tuple[int, int]:
        if isinstance(padding, str):
            if padding == "valid":
                return (0, 0)
            k, d = _pair(kernel), _pair(dilation)
            total = [d[i] * (k[i] - 1) for i in range(2)]
            if any(t % 2 for t in total):
                raise UnsupportedLayerError(f"unsupported {self.where}: asymmetric 'same' padding")
            return (total[0] // 2, total[1] // 2)
        return _pair(padding)

    def _maxpool(self, xi: int, in_shape: O.Shape, kernel: Any, stride: Any, padding: Any,
                 dilation: Any, ceil_mode: bool) -> Result:
        if len(in_shape) != 3:
            raise UnsupportedLayerError(f"unsupported {self.where}: expected (N, C, H, W) input")
        k = _pair(kernel)
        s = _pair(stride) if stride is not None and stride != [] and stride != () else k
        op = O.MaxPoolOp(k, s, _pair(padding), _pair(dilation), bool(ceil_mode), in_shape,
                         self.out_shape, self.device)
        return op, (xi,)

    def _bn(self, xi: int, shape: O.Shape, mean: Tensor, var: Tensor, weight: Tensor | None,
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

    def _reshape(self, xi: int, in_shape: O.Shape) -> Result:
        if in_shape == self.out_shape:
            return xi
        return O.ReshapeOp((in_shape,), self.out_shape), (xi,)

    def _softmax(self, allow: bool, kind: str, dim: Any) -> Result:
        if not allow or len(self.out_shape) != 1 or dim not in (1, -1, None):
            raise UnsupportedLayerError(
                f"unsupported {self.where}: softmax is only supported as the last operation over "
                "the class dimension")
        return kind

    def softmax(self, allow: bool, kind: str) -> Result:
        self.main_input()
        dim = self.n.args[1] if len(self.n.args) > 1 else self.n.kwargs.get("dim")
        return self._softmax(allow, kind, dim)

    # -- functions -------------------------------------------------------------------------
    def add_sub(self, sub: bool) -> Result:
        a, b = self.n.args[0], self.n.args[1]
        alpha = float(self.value(self.n.kwargs.get("alpha", 1.0)))
        a_t = isinstance(a, fx.Node) and a in self.index
        b_t = isinstance(b, fx.Node) and b in self.index
        sign = -alpha if sub else alpha
        if a_t and b_t:
            assert isinstance(a, fx.Node) and isinstance(b, fx.Node)
            if self.shape(a) != self.out_shape or self.shape(b) != self.out_shape:
                raise UnsupportedLayerError(f"unsupported {self.where}: broadcasting tensors")
            return O.AddOp((1.0, sign), self.out_shape), (self.index[a], self.index[b])
        if a_t:
            assert isinstance(a, fx.Node)
            shape = self.shape(a)
            c = self.const(b, shape) * sign
            return O.ScaleShiftOp(torch.ones((), dtype=self.dtype, device=self.device), c,
                                  shape), (self.index[a],)
        assert isinstance(b, fx.Node)
        shape = self.shape(b)
        c = self.const(a, shape)
        scale = torch.tensor(sign, dtype=self.dtype, device=self.device)
        return O.ScaleShiftOp(scale, c, shape), (self.index[b],)

    def mul_div(self, kind: str) -> Result:
        if kind == "neg":
            x = self.main_input()
            return O.ScaleShiftOp(torch.tensor(-1.0, dtype=self.dtype, device=self.device), None,
                                  self.shape(x)), (self.index[x],)
        a, b = self.n.args[0], self.n.args[1]
        if kind == "div" and self.n.kwargs.get("rounding_mode") is not None:
            raise UnsupportedLayerError(f"unsupported {self.where}: rounding division")
        a_t = isinstance(a, fx.Node) and a in self.index
        b_t = isinstance(b, fx.Node) and b in self.index
        if a_t == b_t or (kind == "div" and not a_t):
            raise UnsupportedLayerError(f"unsupported {self.where}: only products with constants")
        x_arg, c = (a, b) if a_t else (b, a)
        if not isinstance(x_arg, fx.Node):
            raise UnsupportedLayerError(f"unsupported {self.where}")
        x = x_arg
        shape = self.shape(x)
        cst = self.const(c, shape)
        if kind == "div":
            cst = 1.0 / cst
        if not bool(torch.isfinite(cst).all()):
            raise UnsupportedLayerError(f"unsupported {self.where}: non-finite constant")
        return O.ScaleShiftOp(cst, None, shape), (self.index[x],)

    def reshape(self) -> Result:
        x = self.n.args[0]
        if not isinstance(x, fx.Node) or x not in self.index:
            raise UnsupportedLayerError(f"unsupported {self.where}")
        if any(isinstance(a, fx.Node) and a in self.index and a is not x for a in self.n.args[1:]) \
                and self.n.target not in ("view_as", "reshape_as"):
            raise UnsupportedLayerError(f"unsupported {self.where}: several tensor inputs")
        in_shape = self.shape(x)
        if _numel(in_shape) != _numel(self.out_shape):
            raise UnsupportedLayerError(f"unsupported {self.where}: mixes samples")
        return self._reshape(self.index[x], in_shape)

    def f_linear(self) -> Result:
        x = self.main_input()
        kw = self.kwargs(["weight", "bias"], [None, None])
        w = self.param(torch.as_tensor(kw["weight"]))
        assert w is not None
        b = self.param(kw["bias"]) if kw["bias"] is not None else None
        return O.LinearOp(w, b, self.shape(x), self.out_shape), (self.index[x],)

    def f_conv2d(self) -> Result:
        x = self.main_input()
        kw = self.kwargs(["weight", "bias", "stride", "padding", "dilation", "groups"],
                         [None, None, 1, 0, 1, 1])
        w = self.param(torch.as_tensor(kw["weight"]))
        assert w is not None
        pad = self._conv_padding(kw["padding"], tuple(w.shape[-2:]), kw["dilation"])
        return O.ConvOp(w, self.param(kw["bias"]), _pair(kw["stride"]), pad,
                        _pair(kw["dilation"]), int(kw["groups"]), self.shape(x),
                        self.out_shape), (self.index[x],)

    def f_max_pool2d(self) -> Result:
        x = self.main_input()
        kw = self.kwargs(["kernel_size", "stride", "padding", "dilation", "ceil_mode",
                          "return_indices"], [None, None, 0, 1, False, False])
        if kw["return_indices"]:
            raise UnsupportedLayerError(f"unsupported {self.where}: return_indices=True")
        return self._maxpool(self.index[x], self.shape(x), kw["kernel_size"], kw["stride"],
                             kw["padding"], kw["dilation"], kw["ceil_mode"])

    def f_batch_norm(self) -> Result:
        x = self.main_input()
        kw = self.kwargs(["running_mean", "running_var", "weight", "bias", "training", "momentum",
                          "eps"], [None, None, None, None, False, 0.1, 1e-5])
        if kw["training"] or kw["running_mean"] is None or kw["running_var"] is None:
            raise UnsupportedLayerError(f"unsupported {self.where}: training-mode batch norm")
        return self._bn(self.index[x], self.shape(x), kw["running_mean"], kw["running_var"],
                        kw["weight"], kw["bias"], float(kw["eps"]))

    def function(self) -> Result:
        x = self.main_input()
        if self.n.target is F.pad:
            kw = self.kwargs(["pad", "mode", "value"], [None, "constant", None])
            if kw["mode"] != "constant":
                raise UnsupportedLayerError(
                    f"unsupported {self.where}: padding mode {kw['mode']!r}")
        consts: list[Any] = []
        fx.node.map_arg((self.n.args[1:], self.n.kwargs),
                        lambda m: consts.append(self.value(m)) or m)  # type: ignore[func-returns-value]
        _check_literals((self.n.args[1:], self.n.kwargs, consts), self.where)
        n, target, where = self.n, self.n.target, self.where

        def fn(t: Tensor) -> Tensor:
            args = fx.node.map_arg(n.args, lambda m: t if m is x else self.consts[m])
            kwargs = fx.node.map_arg(n.kwargs, lambda m: t if m is x else self.consts[m])
            if n.op == "call_method":
                out = getattr(args[0], str(target))(*args[1:], **kwargs)
            else:
                assert callable(target)
                out = target(*args, **kwargs)
            if not isinstance(out, Tensor):
                raise UnsupportedLayerError(f"unsupported {where}: non-tensor result")
            return out

        label = target if isinstance(target, str) else getattr(target, "__name__", "function")
        return self._function(x, fn, str(label))

    def _function(self, x: fx.Node, fn: Callable[[Tensor], Tensor], label: str) -> Result:
        in_shape = self.shape(x)
        zero = torch.zeros((1, *in_shape), dtype=self.dtype, device=self.device)
        bias = fn(zero)[0]
        op = O.FunctionOp(fn, in_shape, self.out_shape, None if not bool(bias.any()) else bias,
                          label)
        gen = torch.Generator().manual_seed(1)
        p = torch.rand((2, *in_shape), generator=gen, dtype=self.dtype).to(self.device)
        q = torch.rand((2, *in_shape), generator=gen, dtype=self.dtype).to(self.device)
        lp, lq, lpq = op.linear(p), op.linear(q), op.linear(p + 2 * q)
        ok = (tuple(lp.shape[1:]) == self.out_shape and bool((lp >= -1e-9).all())
              and torch.allclose(lpq, lp + 2 * lq, rtol=1e-6, atol=1e-9)
              and torch.allclose(op.linear(p[1:]), lp[1:], rtol=1e-6, atol=1e-9))
        n_in = zero.numel()
        if ok and n_in <= 4096:  # small enough to check every column of the linear part
            eye = torch.eye(n_in, dtype=self.dtype, device=self.device).view(n_in, *in_shape)
            ok = bool((op.linear(eye) >= -1e-12).all())
        if not ok:
            raise UnsupportedLayerError(f"unsupported {self.where}: not a per-sample monotone "
                                        "linear map")
        return op, (self.index[x],)


def _numel(shape: O.Shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _check_literals(obj: Any, where: str) -> None:
    """Function arguments must be plain literals (no tensors, so the map stays monotone)."""
    if isinstance(obj, (tuple, list)):
        for o in obj:
            _check_literals(o, where)
    elif isinstance(obj, dict):
        for o in obj.values():
            _check_literals(o, where)
    elif isinstance(obj, slice):
        _check_literals((obj.start, obj.stop, obj.step), where)
    elif isinstance(obj, Tensor):
        raise UnsupportedLayerError(f"unsupported {where}: tensor-valued argument")
