"""Map one traced ``torch.fx`` node onto a graph operation (used by :mod:`.graph`).

Layers given as ``torch.nn`` modules are converted here, functional calls in
:mod:`.fxfunctions`; both build on :class:`~l0tre.certify.fxcontext.CallContext`.

:func:`convert_call` returns an ``(op, input indices)`` pair, an ``int`` (the node is an
alias of an existing graph node: identity, dropout), the string ``"softmax"`` /
``"log_softmax"`` for a removable trailing softmax, or ``None`` when the node is a constant
computed from constants only (its value is stored in ``consts``).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from l0tre.certify import fxfunctions as fn
from l0tre.certify import ops as O
from l0tre.certify.fxcontext import CallContext, Result, pair
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


def _describe(gm: fx.GraphModule, n: fx.Node) -> str:
    if n.op == "call_module":
        mod = gm.get_submodule(str(n.target))
        return f"layer {n.target!r} ({type(mod).__name__})"
    name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", repr(n.target))
    return f"operation {n.name!r} ({name})"


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
    ctx = CallContext(gm, n, values, index, consts, dtype, device, where, out_shape)
    if n.op == "call_module":
        return convert_module(ctx, gm.get_submodule(str(n.target)), allow_softmax)
    target: Any = n.target
    if target in _SOFTMAX or target in _LOG_SOFTMAX:
        return _softmax_call(ctx, allow_softmax, "softmax" if target in _SOFTMAX else "log_softmax")
    if target in _RELU:
        x = ctx.main_input()
        return O.ReluOp(ctx.shape(x)), (index[x],)
    if target in _ADD or target in _SUB:
        return fn.add_sub(ctx, sub=target in _SUB)
    if target in _MUL or target in _DIV or target in _NEG:
        return fn.mul_div(ctx, "mul" if target in _MUL else "div" if target in _DIV else "neg")
    if target in _RESHAPE:
        return fn.reshape(ctx)
    if target in _IDENTITY:
        x = ctx.main_input()
        if ctx.shape(x) != out_shape:
            raise UnsupportedLayerError(f"{where}: identity changed the shape")
        return index[x]
    if target is F.linear:
        return fn.f_linear(ctx)
    if target is F.conv2d:
        return fn.f_conv2d(ctx)
    if target is F.max_pool2d or getattr(target, "__name__", "") == "max_pool2d" or \
            target == "max_pool2d":
        return fn.f_max_pool2d(ctx)
    if target is F.batch_norm:
        return fn.f_batch_norm(ctx)
    if target in _NONNEG:
        return fn.linear_function(ctx)
    raise UnsupportedLayerError(f"unsupported {where}")


def convert_module(ctx: CallContext, mod: nn.Module, allow_softmax: bool) -> Result:
    """Convert a call of the leaf module ``mod``."""
    x = ctx.main_input()
    xi, in_shape, out_shape = ctx.index[x], ctx.shape(x), ctx.out_shape
    if isinstance(mod, nn.Linear):
        w, b = ctx.param(mod.weight), ctx.param(mod.bias)
        assert w is not None
        return O.LinearOp(w, b, in_shape, out_shape), (xi,)
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros":
            raise UnsupportedLayerError(f"unsupported {ctx.where}: padding_mode={mod.padding_mode!r}")
        pad = ctx.conv_padding(mod.padding, mod.kernel_size, mod.dilation)
        w = ctx.param(mod.weight)
        assert w is not None
        return O.ConvOp(w, ctx.param(mod.bias), pair(mod.stride), pad, pair(mod.dilation), mod.groups, in_shape,
                        out_shape), (xi,)
    if isinstance(mod, nn.ReLU):
        return O.ReluOp(in_shape), (xi,)
    if isinstance(mod, nn.MaxPool2d):
        if mod.return_indices:
            raise UnsupportedLayerError(f"unsupported {ctx.where}: return_indices=True")
        return ctx.maxpool(xi, in_shape, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode)
    if isinstance(mod, _POOL_MODULES):
        return fn.monotone_linear(ctx, x, mod, type(mod).__name__)
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        if mod.running_mean is None or mod.running_var is None:
            raise UnsupportedLayerError(f"unsupported {ctx.where}: no running statistics")
        return ctx.batch_norm(xi, in_shape, mod.running_mean, mod.running_var, mod.weight, mod.bias, mod.eps)
    if isinstance(mod, (nn.Flatten, nn.Unflatten)):
        return ctx.reshape_to(xi, in_shape)
    if isinstance(mod, _DROPOUT_MODULES):
        return xi
    if isinstance(mod, (nn.Softmax, nn.LogSoftmax)):
        kind = "softmax" if isinstance(mod, nn.Softmax) else "log_softmax"
        return ctx.softmax_tail(allow_softmax, kind, mod.dim)
    raise UnsupportedLayerError(f"unsupported {ctx.where}")


def _softmax_call(ctx: CallContext, allow: bool, kind: str) -> Result:
    ctx.main_input()
    dim = ctx.n.args[1] if len(ctx.n.args) > 1 else ctx.n.kwargs.get("dim")
    return ctx.softmax_tail(allow, kind, dim)
