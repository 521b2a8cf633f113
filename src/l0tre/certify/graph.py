"""Turn a torch model into a DAG of supported operations (:class:`Graph`).

The model is traced with :func:`torch.fx.symbolic_trace` (custom modules such as an option-A
ResNet shortcut are traced through; standard ``torch.nn`` layers are leaves). Every traced
node is mapped onto an operation of :mod:`l0tre.certify.ops`; anything else raises
:class:`~l0tre.certify.types.UnsupportedLayerError` naming the layer. The converted graph is
checked against the model on random probes (:mod:`l0tre.certify.graphcheck`), so a wrong
translation is caught at build time; the model runs in plain IEEE arithmetic there
(:func:`l0tre.arith.ieee_float32`), as everywhere in certification.

The graph always takes *pixel-space* inputs ``(N, C, H, W)``: an optional per-channel
normalisation ``(x - mean) / std`` is its first operation.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from l0tre.arith import ieee_float32
from l0tre.certify import ops as O
from l0tre.certify.fxconv import convert_call
from l0tre.certify.graphcheck import check_conversion
from l0tre.certify.types import UnsupportedLayerError

__all__ = ["Graph", "Node", "build_graph", "eval_mode", "normalisation_of"]


@dataclass(frozen=True)
class Node:
    """One graph node: ``op`` applied to the outputs of ``inputs`` (``op`` is ``None`` for the
    input node). ``shape`` is the per-sample output shape."""

    name: str
    op: O.Op | None
    inputs: tuple[int, ...]
    shape: O.Shape


class Graph:
    """A topologically ordered DAG; node 0 is the pixel-space input, the last node the output.

    Attributes:
        nodes: the nodes in topological order.
        dtype, device: where the graph's constants live (inputs are cast to these).
        softmax_dropped: ``"softmax"`` / ``"log_softmax"`` when a trailing softmax was removed
            (argmax and margin signs are unchanged, but output bounds refer to the logits),
            else ``None``.
    """

    def __init__(self, nodes: Sequence[Node], dtype: torch.dtype, device: torch.device,
                 softmax_dropped: str | None = None) -> None:
        self.nodes = tuple(nodes)
        self.dtype = dtype
        self.device = device
        self.softmax_dropped = softmax_dropped
        consumers: list[list[int]] = [[] for _ in self.nodes]
        for i, node in enumerate(self.nodes):
            for j in node.inputs:
                consumers[j].append(i)
        self.consumers = tuple(tuple(c) for c in consumers)

    @property
    def output(self) -> int:
        return len(self.nodes) - 1

    @property
    def input_shape(self) -> O.Shape:
        return self.nodes[0].shape

    @property
    def output_shape(self) -> O.Shape:
        return self.nodes[-1].shape

    def ancestors(self, index: int) -> frozenset[int]:
        """All nodes ``index`` depends on, itself included."""
        seen = {index}
        stack = [index]
        while stack:
            for j in self.nodes[stack.pop()].inputs:
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        return frozenset(seen)

    def forward(self, x: Tensor) -> Tensor:
        """Evaluate on pixel-space inputs ``(N, *input_shape)`` → ``(N, *output_shape)``."""
        x = x.to(device=self.device, dtype=self.dtype)
        values: dict[int, Tensor] = {0: x}
        remaining = [len(c) for c in self.consumers]
        for i, node in enumerate(self.nodes):
            if node.op is None:
                continue
            values[i] = node.op.forward(*(values[j] for j in node.inputs))
            for j in node.inputs:
                remaining[j] -= 1
                if remaining[j] == 0 and j != self.output:
                    del values[j]
        return values[self.output]

    __call__ = forward

    def activations(self, x: Tensor, keep: set[int]) -> dict[int, Tensor]:
        """The values ``(N, *shape)`` of the nodes in ``keep`` for inputs ``x``."""
        x = x.to(device=self.device, dtype=self.dtype)
        values: dict[int, Tensor] = {0: x}
        remaining = [len(c) for c in self.consumers]
        out: dict[int, Tensor] = {0: x} if 0 in keep else {}
        for i, node in enumerate(self.nodes):
            if node.op is None:
                continue
            values[i] = node.op.forward(*(values[j] for j in node.inputs))
            if i in keep:
                out[i] = values[i]
            for j in node.inputs:
                remaining[j] -= 1
                if remaining[j] == 0:
                    del values[j]
        return out

    def __repr__(self) -> str:
        lines = [f"Graph(dtype={self.dtype}, device={self.device}, nodes=["]
        for i, n in enumerate(self.nodes):
            desc = "input" if n.op is None else n.op.describe()
            lines.append(f"  {i}: {n.name} = {desc}{list(n.inputs)} -> {n.shape}")
        return "\n".join(lines + ["])"])


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put every submodule in eval mode (restored afterwards)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def normalisation_of(preprocessing: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` from ``None``, a ``(mean, std)`` pair, a dict or an object with
    ``mean``/``std`` attributes (e.g. :class:`l0tre.classifier.Preprocessing`)."""
    if preprocessing is None:
        return None
    if isinstance(preprocessing, dict):
        mean, std = preprocessing.get("mean"), preprocessing.get("std")
    elif isinstance(preprocessing, (tuple, list)) and len(preprocessing) == 2:
        mean, std = preprocessing
    else:
        mean, std = getattr(preprocessing, "mean", None), getattr(preprocessing, "std", None)
    if mean is None or std is None:
        raise ValueError(
            f"preprocessing: expected None, (mean, std) or a dict, got {preprocessing!r}")
    mean_t = tuple(float(v) for v in torch.as_tensor(mean).flatten().tolist())
    std_t = tuple(float(v) for v in torch.as_tensor(std).flatten().tolist())
    if len(mean_t) != len(std_t) or any(s <= 0 for s in std_t):
        raise ValueError(
            f"preprocessing: need equal-length mean/std with std > 0, got {preprocessing!r}")
    return mean_t, std_t


def _norm_fn(norm: tuple[tuple[float, ...], tuple[float, ...]] | None,
             channels: int) -> Callable[[Tensor], Tensor]:
    if norm is None:
        return lambda x: x
    mean, std = norm
    if len(mean) not in (1, channels):
        raise ValueError(f"preprocessing: {len(mean)} channels given, the input has {channels}")

    def fn(x: Tensor) -> Tensor:
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - m) / s

    return fn


class _Recorder(fx.Interpreter):
    """Runs a traced module and records every node's value."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # tracing failures come in many types
        raise UnsupportedLayerError(
            f"cannot trace model {type(model).__name__} with torch.fx "
            f"(data-dependent control flow?): {exc}"
        ) from exc


@ieee_float32()
def build_graph(
    model: nn.Module | Graph,
    input_shape: Sequence[int],
    *,
    preprocessing: Any = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    drop_softmax: bool = True,
    check: bool = True,
) -> Graph:
    """Convert ``model`` (inputs after normalisation) into a pixel-space :class:`Graph`.

    Args:
        model: the ``nn.Module`` (bounded with eval-mode semantics) or an existing graph.
        input_shape: per-sample pixel-space input shape ``(C, H, W)``.
        preprocessing: optional per-channel normalisation, see :func:`normalisation_of`.
        dtype: floating type of the bound computations (float64 by default).
        device: where to compute (default: the model's parameter device).
        drop_softmax: remove a trailing softmax / log-softmax (it preserves argmax).
        check: compare the graph with the model on random probes
            (:func:`~l0tre.certify.graphcheck.check_conversion`).

    The model runs in plain IEEE arithmetic here (:func:`l0tre.arith.ieee_float32`: no TF32
    convolutions or matmuls, whatever the global settings), so the graph is checked against
    the float32 model that certificates speak about.

    Raises:
        UnsupportedLayerError: a layer or function cannot be bounded soundly.
    """
    if isinstance(model, Graph):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    shape = tuple(int(s) for s in input_shape)
    if device is None:
        params = list(model.parameters()) + list(model.buffers())
        device = params[0].device if params else torch.device("cpu")
    dev = torch.device(device)
    norm = normalisation_of(preprocessing)
    model_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()),
                       torch.float32)
    with eval_mode(model), torch.no_grad():
        gm = _trace(model)
        gen = torch.Generator().manual_seed(0)
        pixel_probe = torch.rand((2, *shape), generator=gen, dtype=torch.float64).to(dev)
        normed = _norm_fn(norm, shape[0] if shape else 1)
        rec = _Recorder(gm)
        try:
            out = rec.run(normed(pixel_probe).to(model_dtype))
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise ValueError(
                f"model: failed on inputs of per-sample shape {shape}: {exc}") from exc
        graph = _convert(gm, rec.values, shape, norm, dtype, dev, drop_softmax)
        if check:
            check_conversion(graph, out, pixel_probe, model_dtype)
    return graph


def _convert(gm: fx.GraphModule, values: dict[fx.Node, Any], shape: O.Shape,
             norm: tuple[tuple[float, ...], tuple[float, ...]] | None, dtype: torch.dtype,
             device: torch.device, drop_softmax: bool) -> Graph:
    nodes: list[Node] = [Node("input", None, (), shape)]
    if norm is not None:
        c = shape[0]
        mean = torch.tensor(norm[0], dtype=dtype, device=device).expand(c).reshape(c, 1, 1)
        std = torch.tensor(norm[1], dtype=dtype, device=device).expand(c).reshape(c, 1, 1)
        nodes.append(Node("normalise", O.ScaleShiftOp(1.0 / std, -mean / std, shape), (0,), shape))
    index: dict[fx.Node, int] = {}
    consts: dict[fx.Node, Any] = {}
    placeholder_seen = False
    softmax_dropped: str | None = None
    output_node = next(n for n in gm.graph.nodes if n.op == "output")
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            if placeholder_seen:
                raise UnsupportedLayerError(
                    f"model input {n.name!r}: only single-input models are supported")
            placeholder_seen = True
            index[n] = len(nodes) - 1
            continue
        if n.op == "get_attr":
            consts[n] = values[n]
            continue
        if n.op == "output":
            break
        value = values.get(n)
        if not isinstance(value, Tensor):
            if n.op == "call_module":
                mod = gm.get_submodule(str(n.target))
                raise UnsupportedLayerError(
                    f"unsupported layer {n.target!r} ({type(mod).__name__}): non-tensor output")
            _check_meta(n, index)
            consts[n] = value
            continue
        feeds_output = output_node.args[0] is n or (
            isinstance(output_node.args[0], (tuple, list)) and len(output_node.args[0]) == 1
            and output_node.args[0][0] is n)
        res = convert_call(gm, n, values, index, consts, nodes, dtype, device,
                           allow_softmax=drop_softmax and feeds_output)
        if res is None:
            continue
        if isinstance(res, str):
            softmax_dropped = res
            index[n] = index[_first_tensor_arg(n, index)]
        elif isinstance(res, int):
            index[n] = res
        else:
            op, inputs = res
            name = str(n.target) if n.op == "call_module" else n.name
            nodes.append(Node(name, op, inputs, op.out_shape))
            index[n] = len(nodes) - 1
    out_arg = output_node.args[0]
    if isinstance(out_arg, (tuple, list)) and len(out_arg) == 1:
        out_arg = out_arg[0]
    if not isinstance(out_arg, fx.Node) or out_arg not in index:
        raise UnsupportedLayerError("model output: expected a single tensor")
    return _prune(nodes, index[out_arg], dtype, device, softmax_dropped)


def _first_tensor_arg(n: fx.Node, index: dict[fx.Node, int]) -> fx.Node:
    for a in n.args:
        if isinstance(a, fx.Node) and a in index:
            return a
    raise UnsupportedLayerError(f"layer {n.name!r}: no tensor input")


_META_METHODS = {"size", "dim", "numel"}
_META_FUNCS = {getattr, operator.getitem, operator.mul, operator.floordiv, operator.add,
               operator.sub, len}


def _check_meta(n: fx.Node, index: dict[fx.Node, int]) -> None:
    """Allow only shape arithmetic among the non-tensor nodes (no data-dependent values)."""
    ok = (n.op == "call_method" and n.target in _META_METHODS) or (
        n.op == "call_function" and n.target in _META_FUNCS
        and not any(isinstance(a, fx.Node) and a in index for a in n.args[1:])
        and (n.target is not operator.getitem
             or not (isinstance(n.args[0], fx.Node) and n.args[0] in index))
    )
    if not ok:
        raise UnsupportedLayerError(
            f"operation {n.name!r} ({n.op} {getattr(n.target, '__name__', n.target)}) produces a "
            "non-tensor, data-dependent value"
        )


def _prune(nodes: list[Node], out: int, dtype: torch.dtype, device: torch.device,
           softmax_dropped: str | None) -> Graph:
    keep = {out}
    for i in range(out, -1, -1):
        if i in keep:
            keep.update(nodes[i].inputs)
    keep.add(0)
    order = sorted(keep)
    remap = {old: new for new, old in enumerate(order)}
    new_nodes = [Node(nodes[i].name, nodes[i].op, tuple(remap[j] for j in nodes[i].inputs),
                      nodes[i].shape) for i in order]
    return Graph(new_nodes, dtype, device, softmax_dropped)
