"""The windowed program of a model with branches (residual blocks), traced with ``torch.fx``.

:mod:`.incremental` follows a ``torch.nn.Sequential`` layer by layer. Networks such as ResNets
have blocks whose input feeds two branches that are added again (``relu(body(x) + skip(x))``),
and often a functional ``F.relu`` in ``forward``: their layer list does not tell the function.
Here the model is traced to its dataflow graph, and each node that depends on the input becomes
a *step* of a small program:

* ``input`` — the normalised image;
* ``pointwise`` — elementwise modules and functions (ReLU, BatchNorm in eval, …; channel
  padding ``F.pad(x, (0, 0, 0, 0, a, b))``);
* ``spatial`` — ``Conv2d`` (zero padding, no dilation), ``MaxPool2d`` (padding reads ``-inf``),
  ``AvgPool2d`` (padding only when counted), strided subsampling ``x[:, :, ::s, ::s]``;
* ``add`` — the sum of two steps (the residual connection).

For every step and every input pixel the *window* of the map that pixel can change is known in
advance: its origin (a table over the pixels) and its size (the same for all pixels). The
program ends at a *cut*: a step after which nothing reads an earlier step, so that the rest of
the network is a function of that one map (:attr:`GraphProgram.rest`, a ``GraphModule``). It
ends at the last cut before a window would cover more than ``max_share`` of its map, or before a
node that is not supported.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .windows import _ceil_div, _pair

__all__ = ["GraphProgram", "Step", "trace_program"]

_Pair = tuple[int, int]

_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout, nn.GELU, nn.SiLU,
    nn.Hardtanh, nn.BatchNorm2d,
)
_POINTWISE_FUNCTIONS: dict[Any, Callable[..., torch.Tensor]] = {
    F.relu: F.relu, torch.relu: torch.relu, torch.relu_: torch.relu, F.relu6: F.relu6, torch.sigmoid: torch.sigmoid,
    torch.tanh: torch.tanh, F.leaky_relu: F.leaky_relu, F.gelu: F.gelu, F.silu: F.silu, F.elu: F.elu,
    F.hardtanh: F.hardtanh,
}
_POINTWISE_METHODS = {"relu": torch.relu, "relu_": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_")


@dataclass(frozen=True)
class Pointwise:
    """An elementwise map of a step's values: ``module(v)`` or ``function(v, *args, **kwargs)``
    (never in place)."""

    module: nn.Module | None = None
    function: Callable[..., torch.Tensor] | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if self.module is not None:
            return self.module(v)
        assert self.function is not None  # built with one of the two
        return self.function(v, *self.args, **self.kwargs)


@dataclass(frozen=True)
class Spatial:
    """A windowed spatial layer: ``op`` is ``conv``, ``max``, ``avg`` or ``subsample``."""

    op: str
    kernel: _Pair
    stride: _Pair
    padding: _Pair
    module: nn.Module | None = None

    @property
    def pad_value(self) -> float:
        """What the layer's padding reads."""
        return float("-inf") if self.op == "max" else 0.0

    def run(self, patch: torch.Tensor) -> torch.Tensor:
        """The layer without padding on ``patch`` ``(B, C, h, w)`` (its padding is in the patch)."""
        if self.op == "conv":
            m = self.module
            assert isinstance(m, nn.Conv2d)
            return F.conv2d(patch, m.weight, m.bias, stride=self.stride, groups=m.groups)
        if self.op == "max":
            return F.max_pool2d(patch, self.kernel, self.stride)
        if self.op == "avg":
            return F.avg_pool2d(patch, self.kernel, self.stride)
        return patch[:, :, :: self.stride[0], :: self.stride[1]]

    def full(self, z: torch.Tensor) -> torch.Tensor:
        """The layer on a whole map ``z`` ``(N, C, H, W)``, with its padding."""
        if self.op == "subsample":
            return z[:, :, :: self.stride[0], :: self.stride[1]]
        assert self.module is not None
        return self.module(z)


@dataclass
class Step:
    """One step of the program (see the module docstring).

    Attributes:
        kind: ``input``, ``pointwise``, ``spatial`` or ``add``.
        inputs: indices of the steps it reads.
        size: window size ``(wh, ww)`` at its output (the same for every pixel).
        map: its output map ``(H, W)``.
        org: ``(H0·W0, 2)`` long: window origin (row, col; may lie outside the map) per input pixel.
        patch: ``spatial``: input patch size; ``add``: frame size (= ``size``).
        margin_lo, margin_hi: ``spatial``: rows/cols of padding the cached input map needs.
    """

    kind: str
    inputs: tuple[int, ...]
    size: _Pair
    map: _Pair
    org: torch.Tensor
    pointwise: Pointwise | None = None
    spatial: Spatial | None = None
    patch: _Pair = (0, 0)
    margin_lo: _Pair = (0, 0)
    margin_hi: _Pair = (0, 0)
    whole: tuple[bool, ...] = ()  # ``add``: per input, whether its window is the whole frame


@dataclass
class GraphProgram:
    """The traced steps up to the cut (the last step) and the network after it."""

    steps: list[Step]
    rest: nn.Module
    image: tuple[int, int, int]

    @property
    def last_read(self) -> list[int]:
        """Per step, the index of the last step that reads it (``len(steps)`` for the cut)."""
        last = [len(self.steps)] * len(self.steps)
        for j, s in enumerate(self.steps):
            for i in s.inputs:
                last[i] = j
        return last

    @property
    def convs(self) -> int:
        """Convolutions computed on windows."""
        return sum(s.spatial is not None and s.spatial.op == "conv" for s in self.steps)


def _spatial_of(node: fx.Node, modules: dict[str, nn.Module]) -> Spatial | None:
    if node.op == "call_module":
        m = modules[str(node.target)]
        if isinstance(m, nn.Conv2d):
            if isinstance(m.padding, str) or m.padding_mode != "zeros" or _pair(m.dilation) != (1, 1):
                return None
            return Spatial("conv", _pair(m.kernel_size), _pair(m.stride), _pair(m.padding), m)
        if isinstance(m, nn.MaxPool2d):
            if _pair(m.dilation) != (1, 1) or m.return_indices or m.ceil_mode:
                return None
            k = _pair(m.kernel_size)
            return Spatial("max", k, _pair(m.stride if m.stride is not None else k), _pair(m.padding), m)
        if isinstance(m, nn.AvgPool2d):
            k = _pair(m.kernel_size)
            p = _pair(m.padding)
            if m.ceil_mode or m.divisor_override is not None or (p != (0, 0) and not m.count_include_pad):
                return None
            return Spatial("avg", k, _pair(m.stride if m.stride is not None else k), p, m)
        return None
    if node.op == "call_function" and node.target is operator.getitem and len(node.args) == 2:
        idx = node.args[1]
        sl = [s for s in idx if isinstance(s, slice)] if isinstance(idx, tuple) else []
        if len(sl) != 4 or len(sl) != len(idx):  # type: ignore[arg-type]
            return None
        if any(s != slice(None) for s in sl[:2]) or any(s.start is not None or s.stop is not None for s in sl[2:]):
            return None
        st = (sl[2].step or 1, sl[3].step or 1)
        if not all(isinstance(v, int) and v >= 1 for v in st):
            return None
        return Spatial("subsample", (1, 1), (int(st[0]), int(st[1])), (0, 0))
    return None


def _pointwise_of(node: fx.Node, modules: dict[str, nn.Module]) -> Pointwise | None:
    if any(isinstance(a, fx.Node) for a in [*node.args[1:], *node.kwargs.values()]):
        return None  # a second tensor operand
    kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
    if node.op == "call_module":
        m = modules[str(node.target)]
        if not isinstance(m, _POINTWISE_MODULES) or m.training:
            return None
        if getattr(m, "inplace", False):
            m = copy.copy(m)
            m.inplace = False
        return Pointwise(module=m)
    if node.op == "call_function":
        fn = _POINTWISE_FUNCTIONS.get(node.target)
        if fn is not None:
            return Pointwise(function=fn, args=tuple(a for a in node.args[1:] if not isinstance(a, bool)),
                             kwargs=kwargs)
        if node.target is F.pad:
            pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
            if isinstance(pad, (tuple, list)) and len(pad) == 6 and all(v == 0 for v in pad[:4]):
                return Pointwise(function=F.pad, args=tuple(node.args[1:]), kwargs=dict(node.kwargs))
        return None
    if node.op == "call_method" and node.target in _POINTWISE_METHODS and len(node.args) == 1 and not kwargs:
        return Pointwise(function=_POINTWISE_METHODS[str(node.target)])
    return None


def _is_add(node: fx.Node) -> bool:
    two = len(node.args) == 2 and all(isinstance(a, fx.Node) for a in node.args) and not node.kwargs
    if node.op == "call_function":
        return two and node.target in _ADD_FUNCTIONS
    return node.op == "call_method" and two and node.target in _ADD_METHODS


def _spatial_step(sp: Spatial, src: Step, inp: int, shape: tuple[int, ...]) -> Step:
    """The geometry of ``sp`` reading step ``src`` (index ``inp``) of output shape ``shape``."""
    org_out, size, patch, lo, hi = [], [], [], [], []
    for d in (0, 1):
        k, s, p = sp.kernel[d], sp.stride[d], sp.padding[d]
        o = torch.div(src.org[:, d] + p - k + s, s, rounding_mode="floor")  # ceil((r + p - k + 1) / s)
        w_out = _ceil_div(src.size[d] + k - 1, s)
        ph = (w_out - 1) * s + k
        start = o * s - p
        org_out.append(o)
        size.append(w_out)
        patch.append(ph)
        lo.append(max(0, -int(start.min())))
        hi.append(max(0, int((start + ph).max()) - src.map[d]))
    return Step("spatial", (inp,), (size[0], size[1]), (int(shape[2]), int(shape[3])), torch.stack(org_out, 1),
                spatial=sp, patch=(patch[0], patch[1]), margin_lo=(lo[0], lo[1]), margin_hi=(hi[0], hi[1]))


def _add_step(a: Step, b: Step, ia: int, ib: int) -> Step:
    org = torch.minimum(a.org, b.org)
    end = torch.maximum(a.org + torch.tensor(a.size), b.org + torch.tensor(b.size))
    size = (int((end - org)[:, 0].max()), int((end - org)[:, 1].max()))
    whole = tuple(s.size == size and bool((s.org == org).all()) for s in (a, b))
    return Step("add", (ia, ib), size, a.map, org, patch=size, whole=whole)


def _shapes(gm: fx.GraphModule, probe: torch.Tensor) -> dict[fx.Node, tuple[int, ...]]:
    """The output shape of every node for ``probe``."""
    shapes: dict[fx.Node, tuple[int, ...]] = {}

    class _Record(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                shapes[n] = tuple(out.shape)
            return out

    _Record(gm).run(probe)
    return shapes


def trace_program(module: nn.Module, shape: tuple[int, int, int], max_share: float = 0.8,
                  windows: int = 1) -> GraphProgram | None:
    """The program of ``module`` (eval mode) on normalised inputs of ``shape`` ``(C, H, W)``, or
    ``None`` when it cannot be traced or no spatial step fits (see the module docstring)."""
    if module.training:
        return None
    try:
        gm = fx.symbolic_trace(module)
        with torch.no_grad():
            p = next(iter(module.parameters()), None)
            probe = torch.zeros(1, *shape, dtype=p.dtype if p is not None else torch.float32,
                                device=p.device if p is not None else None)
            shapes = _shapes(gm, probe)
    except Exception:  # noqa: BLE001 - any model fx cannot trace or run symbolically: no program
        return None
    steps, node_step, cut, cut_node = _walk(gm, shapes, shape, max_share, windows)
    if cut_node is None or not any(s.kind == "spatial" for s in steps[: cut + 1]):
        return None
    return GraphProgram(steps=steps[: cut + 1], rest=_rest(gm, cut_node), image=shape)


def _walk(gm: fx.GraphModule, shapes: dict[fx.Node, tuple[int, ...]], shape: tuple[int, int, int],
          max_share: float, windows: int) -> tuple[list[Step], dict[fx.Node, int], int, fx.Node | None]:
    """Steps in graph order until the first unsupported node or oversized window; the last cut
    (index, node) before it."""
    modules = dict(gm.named_modules())
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    last_use = {n: max((order[u] for u in n.users), default=order[n]) for n in gm.graph.nodes}
    h, w = shape[1], shape[2]
    pix = torch.arange(h * w)
    steps: list[Step] = []
    node_step: dict[fx.Node, int] = {}
    cut, cut_node = -1, None
    open_reads = 0  # max last use of the steps before the current one
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            continue
        if n.op == "placeholder":
            if steps:
                break  # a second input
            steps.append(Step("input", (), (1, 1), (h, w), torch.stack([pix // w, pix % w], 1)))
        else:
            step = _step_of(n, modules, node_step, steps, shapes)
            if step is None or (step.kind in ("spatial", "add")
                                and windows * step.size[0] * step.size[1] > max_share * step.map[0] * step.map[1]):
                break
            steps.append(step)
        node_step[n] = len(steps) - 1
        if open_reads <= order[n] and len(shapes.get(n, ())) == 4:
            cut, cut_node = len(steps) - 1, n
        open_reads = max(open_reads, last_use[n])
    return steps, node_step, cut, cut_node


def _step_of(n: fx.Node, modules: dict[str, nn.Module], node_step: dict[fx.Node, int], steps: list[Step],
             shapes: dict[fx.Node, tuple[int, ...]]) -> Step | None:
    """The step of node ``n`` (its tensor inputs already steps), or ``None`` when not supported."""
    if n.op not in ("call_module", "call_function", "call_method") or n not in shapes or len(shapes[n]) != 4:
        return None
    ins = [a for a in n.args if isinstance(a, fx.Node)]
    if not ins or any(a not in node_step for a in ins):
        return None
    if _is_add(n):
        ia, ib = node_step[ins[0]], node_step[ins[1]]
        if shapes[ins[0]] != shapes[ins[1]]:
            return None
        return _add_step(steps[ia], steps[ib], ia, ib)
    src = node_step[ins[0]]
    sp = _spatial_of(n, modules)
    if sp is not None:
        return _spatial_step(sp, steps[src], src, shapes[n])
    pw = _pointwise_of(n, modules)
    if pw is None or shapes[n][2:] != shapes[ins[0]][2:]:
        return None
    prev = steps[src]
    return Step("pointwise", (src,), prev.size, prev.map, prev.org, pointwise=pw)


def _rest(gm: fx.GraphModule, cut: fx.Node) -> fx.GraphModule:
    """The network after ``cut`` as a module of the cut's map."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {cut: graph.placeholder("x")}
    after = False
    for n in gm.graph.nodes:
        if n is cut:
            after = True
        elif after or n.op == "get_attr":
            env[n] = graph.node_copy(n, lambda m: env[m])
    return fx.GraphModule(gm, graph)
