"""Conversion of traced functional calls (``torch.*`` / ``F.*`` functions and tensor methods)
onto graph operations; used by :func:`l0tre.certify.fxconv.convert_call`.

Arithmetic with constants becomes a :class:`~l0tre.certify.ops.ScaleShiftOp`, the sum of two
graph tensors an :class:`~l0tre.certify.ops.AddOp`; any other function of one tensor (slicing,
padding, average pooling, permutations …) is accepted only after a check that it is a
per-sample, monotone (non-negative) linear map, and is bounded through its linear part.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor

from l0tre.certify import ops as O
from l0tre.certify.fxcontext import CallContext, Result, pair
from l0tre.certify.types import UnsupportedLayerError

__all__ = ["add_sub", "f_batch_norm", "f_conv2d", "f_linear", "f_max_pool2d", "linear_function", "monotone_linear",
           "mul_div", "reshape"]


def add_sub(ctx: CallContext, sub: bool) -> Result:
    a, b = ctx.n.args[0], ctx.n.args[1]
    alpha = float(ctx.value(ctx.n.kwargs.get("alpha", 1.0)))
    a_t = isinstance(a, fx.Node) and a in ctx.index
    b_t = isinstance(b, fx.Node) and b in ctx.index
    sign = -alpha if sub else alpha
    if a_t and b_t:
        assert isinstance(a, fx.Node) and isinstance(b, fx.Node)
        if ctx.shape(a) != ctx.out_shape or ctx.shape(b) != ctx.out_shape:
            raise UnsupportedLayerError(f"unsupported {ctx.where}: broadcasting tensors")
        return O.AddOp((1.0, sign), ctx.out_shape), (ctx.index[a], ctx.index[b])
    if a_t:
        assert isinstance(a, fx.Node)
        shape = ctx.shape(a)
        c = ctx.const(b, shape) * sign
        return O.ScaleShiftOp(torch.ones((), dtype=ctx.dtype, device=ctx.device), c, shape), (ctx.index[a],)
    assert isinstance(b, fx.Node)
    shape = ctx.shape(b)
    c = ctx.const(a, shape)
    scale = torch.tensor(sign, dtype=ctx.dtype, device=ctx.device)
    return O.ScaleShiftOp(scale, c, shape), (ctx.index[b],)


def mul_div(ctx: CallContext, kind: str) -> Result:
    """``kind``: ``"mul"``, ``"div"`` or ``"neg"``; products with constants only."""
    if kind == "neg":
        x = ctx.main_input()
        return O.ScaleShiftOp(torch.tensor(-1.0, dtype=ctx.dtype, device=ctx.device), None,
                              ctx.shape(x)), (ctx.index[x],)
    a, b = ctx.n.args[0], ctx.n.args[1]
    if kind == "div" and ctx.n.kwargs.get("rounding_mode") is not None:
        raise UnsupportedLayerError(f"unsupported {ctx.where}: rounding division")
    a_t = isinstance(a, fx.Node) and a in ctx.index
    b_t = isinstance(b, fx.Node) and b in ctx.index
    if a_t == b_t or (kind == "div" and not a_t):
        raise UnsupportedLayerError(f"unsupported {ctx.where}: only products with constants")
    x_arg, c = (a, b) if a_t else (b, a)
    if not isinstance(x_arg, fx.Node):
        raise UnsupportedLayerError(f"unsupported {ctx.where}")
    x = x_arg
    shape = ctx.shape(x)
    cst = ctx.const(c, shape)
    if kind == "div":
        cst = 1.0 / cst
    if not bool(torch.isfinite(cst).all()):
        raise UnsupportedLayerError(f"unsupported {ctx.where}: non-finite constant")
    return O.ScaleShiftOp(cst, None, shape), (ctx.index[x],)


def reshape(ctx: CallContext) -> Result:
    x = ctx.n.args[0]
    if not isinstance(x, fx.Node) or x not in ctx.index:
        raise UnsupportedLayerError(f"unsupported {ctx.where}")
    if any(isinstance(a, fx.Node) and a in ctx.index and a is not x for a in ctx.n.args[1:]) \
            and ctx.n.target not in ("view_as", "reshape_as"):
        raise UnsupportedLayerError(f"unsupported {ctx.where}: several tensor inputs")
    in_shape = ctx.shape(x)
    if math.prod(in_shape) != math.prod(ctx.out_shape):
        raise UnsupportedLayerError(f"unsupported {ctx.where}: mixes samples")
    return ctx.reshape_to(ctx.index[x], in_shape)


def f_linear(ctx: CallContext) -> Result:
    x = ctx.main_input()
    kw = ctx.kwargs(["weight", "bias"], [None, None])
    w = ctx.param(torch.as_tensor(kw["weight"]))
    assert w is not None
    b = ctx.param(kw["bias"]) if kw["bias"] is not None else None
    return O.LinearOp(w, b, ctx.shape(x), ctx.out_shape), (ctx.index[x],)


def f_conv2d(ctx: CallContext) -> Result:
    x = ctx.main_input()
    kw = ctx.kwargs(["weight", "bias", "stride", "padding", "dilation", "groups"], [None, None, 1, 0, 1, 1])
    w = ctx.param(torch.as_tensor(kw["weight"]))
    assert w is not None
    pad = ctx.conv_padding(kw["padding"], tuple(w.shape[-2:]), kw["dilation"])
    return O.ConvOp(w, ctx.param(kw["bias"]), pair(kw["stride"]), pad, pair(kw["dilation"]), int(kw["groups"]),
                    ctx.shape(x), ctx.out_shape), (ctx.index[x],)


def f_max_pool2d(ctx: CallContext) -> Result:
    x = ctx.main_input()
    kw = ctx.kwargs(["kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"],
                    [None, None, 0, 1, False, False])
    if kw["return_indices"]:
        raise UnsupportedLayerError(f"unsupported {ctx.where}: return_indices=True")
    return ctx.maxpool(ctx.index[x], ctx.shape(x), kw["kernel_size"], kw["stride"], kw["padding"],
                       kw["dilation"], kw["ceil_mode"])


def f_batch_norm(ctx: CallContext) -> Result:
    x = ctx.main_input()
    kw = ctx.kwargs(["running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"],
                    [None, None, None, None, False, 0.1, 1e-5])
    if kw["training"] or kw["running_mean"] is None or kw["running_var"] is None:
        raise UnsupportedLayerError(f"unsupported {ctx.where}: training-mode batch norm")
    return ctx.batch_norm(ctx.index[x], ctx.shape(x), kw["running_mean"], kw["running_var"], kw["weight"],
                          kw["bias"], float(kw["eps"]))


def linear_function(ctx: CallContext) -> Result:
    """A function of one graph tensor with literal arguments (slicing, padding, average
    pooling, ``mean``, permutations): a per-sample monotone linear map, checked."""
    x = ctx.main_input()
    if ctx.n.target is F.pad:
        kw = ctx.kwargs(["pad", "mode", "value"], [None, "constant", None])
        if kw["mode"] != "constant":
            raise UnsupportedLayerError(f"unsupported {ctx.where}: padding mode {kw['mode']!r}")
    consts: list[Any] = []
    fx.node.map_arg((ctx.n.args[1:], ctx.n.kwargs),
                    lambda m: consts.append(ctx.value(m)) or m)  # type: ignore[func-returns-value]
    _check_literals((ctx.n.args[1:], ctx.n.kwargs, consts), ctx.where)
    n, target, where = ctx.n, ctx.n.target, ctx.where

    def fn(t: Tensor) -> Tensor:
        args = fx.node.map_arg(n.args, lambda m: t if m is x else ctx.consts[m])
        kwargs = fx.node.map_arg(n.kwargs, lambda m: t if m is x else ctx.consts[m])
        if n.op == "call_method":
            out = getattr(args[0], str(target))(*args[1:], **kwargs)
        else:
            assert callable(target)
            out = target(*args, **kwargs)
        if not isinstance(out, Tensor):
            raise UnsupportedLayerError(f"unsupported {where}: non-tensor result")
        return out

    label = target if isinstance(target, str) else getattr(target, "__name__", "function")
    return monotone_linear(ctx, x, fn, str(label))


def monotone_linear(ctx: CallContext, x: fx.Node, fn: Callable[[Tensor], Tensor], label: str) -> Result:
    """``fn`` of the graph tensor ``x`` as a :class:`~l0tre.certify.ops.FunctionOp`, after
    checking on probes that it is per-sample, linear (plus a constant) and non-negative."""
    in_shape = ctx.shape(x)
    zero = torch.zeros((1, *in_shape), dtype=ctx.dtype, device=ctx.device)
    bias = fn(zero)[0]
    op = O.FunctionOp(fn, in_shape, ctx.out_shape, None if not bool(bias.any()) else bias, label)
    gen = torch.Generator().manual_seed(1)
    p = torch.rand((2, *in_shape), generator=gen, dtype=ctx.dtype).to(ctx.device)
    q = torch.rand((2, *in_shape), generator=gen, dtype=ctx.dtype).to(ctx.device)
    lp, lq, lpq = op.linear(p), op.linear(q), op.linear(p + 2 * q)
    ok = (tuple(lp.shape[1:]) == ctx.out_shape and bool((lp >= -1e-9).all())
          and torch.allclose(lpq, lp + 2 * lq, rtol=1e-6, atol=1e-9)
          and torch.allclose(op.linear(p[1:]), lp[1:], rtol=1e-6, atol=1e-9))
    n_in = zero.numel()
    if ok and n_in <= 4096:  # small enough to check every column of the linear part
        eye = torch.eye(n_in, dtype=ctx.dtype, device=ctx.device).view(n_in, *in_shape)
        ok = bool((op.linear(eye) >= -1e-12).all())
    if not ok:
        raise UnsupportedLayerError(f"unsupported {ctx.where}: not a per-sample monotone linear map")
    return op, (ctx.index[x],)


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
