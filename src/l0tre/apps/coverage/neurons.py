"""Which neurons count for coverage, and their values on a batch of inputs.

The neurons are the outputs of every hidden ReLU of the model (``nn.ReLU`` modules and
functional ``F.relu`` / ``torch.relu`` alike: the model is traced with torch.fx into the
certification graph, :mod:`l0tre.certify.graph`, whose ``ReluOp`` nodes are exactly these);
the model's output is never a neuron. Two definitions (:class:`NeuronKind`):

* ``channel``: one neuron per channel of a convolutional feature map, its value the channel's
  mean activation over ``(H, W)``; one per unit of a dense layer (the DeepXplore convention).
* ``element``: every element of every activation map.

A neuron is *covered* by an input when its value is ``> threshold``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ...certify import ops as O
from ...certify.graph import Graph
from ...validate import Choice

__all__ = ["Layer", "NeuronKind", "Neurons", "describe", "gradients"]


class NeuronKind(Choice):
    """What one neuron is (module docstring)."""

    CHANNEL = "channel"
    ELEMENT = "element"

    @classmethod
    def argument(cls) -> str:
        return "neurons"


@dataclass(frozen=True)
class Layer:
    """One hidden activation.

    Attributes:
        name: the ReLU's name in the traced model (module path, or the fx name of a
            functional call such as ``relu_3``).
        node: index of the ReLU node in the graph; ``pre`` the index of its input (the
            pre-activation).
        after: name of the node that feeds the ReLU (e.g. ``layer1.0.bn1``).
        shape: the per-sample activation shape, ``(C, H, W)`` or ``(D,)``.
        offset: index of the layer's first neuron among all neurons; ``count`` its neurons.
    """

    name: str
    node: int
    pre: int
    after: str
    shape: tuple[int, ...]
    offset: int
    count: int


@dataclass(frozen=True, eq=False)
class Neurons:
    """The neurons of a model under one definition (module docstring)."""

    graph: Graph
    kind: NeuronKind
    layers: tuple[Layer, ...]

    @property
    def total(self) -> int:
        return sum(layer.count for layer in self.layers)

    @classmethod
    def discover(cls, graph: Graph, kind: NeuronKind | str, layers: Sequence[str] | None = None) -> Neurons:
        """The hidden ReLUs of ``graph`` (all, or those named in ``layers``).

        Raises:
            ValueError: no hidden activation, or an unknown layer name.
        """
        kind = NeuronKind.parse(kind)
        found: list[tuple[str, int, int, str, tuple[int, ...]]] = []
        for i, node in enumerate(graph.nodes):
            if isinstance(node.op, O.ReluOp) and i != graph.output:
                pre = node.inputs[0]
                found.append((node.name, i, pre, graph.nodes[pre].name, tuple(node.shape)))
        if not found:
            raise ValueError("model: expected at least one hidden ReLU activation (nn.ReLU or F.relu) to cover, "
                             "got none")
        if layers is not None:
            names = [f[0] for f in found]
            unknown = [name for name in layers if name not in names]
            if unknown or not layers:
                raise ValueError(f"layers: expected names among {names}, got {list(layers)!r}")
            found = [f for f in found if f[0] in set(layers)]
        out: list[Layer] = []
        offset = 0
        for name, index, pre, after, shape in found:
            count = math.prod(shape) if kind is NeuronKind.ELEMENT or len(shape) == 1 else shape[0]
            out.append(Layer(name, index, pre, after, shape, offset, count))
            offset += count
        return cls(graph, kind, tuple(out))

    def layer_of(self, neuron: Tensor) -> Tensor:
        """Layer index of each neuron index ``(U,)`` → ``(U,)``."""
        starts = torch.tensor([layer.offset for layer in self.layers], device=neuron.device)
        return torch.searchsorted(starts, neuron, right=True) - 1

    def describe(self, neuron: int) -> str:
        """``layer[index]`` of one neuron, for figures and reports."""
        return describe(self.layers, self.kind, neuron)

    def values(self, x: Tensor, columns: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Neuron values and closeness scores of inputs ``x`` ``(B, C, H, W)`` (pixel space).

        Args:
            columns: neuron indices ``(U,)`` to return (default: all, in order).

        Returns:
            ``(value, score)``, each ``(B, U)`` in the graph's dtype: ``value`` is the activation
            (channel mean or element); ``score`` orders how close a neuron is to firing: the
            value where it is positive, else the largest pre-activation (``≤ 0``) of the neuron.
        """
        with torch.no_grad():
            acts = self.graph.activations(x, {layer.pre for layer in self.layers})
        picked = None if columns is None else columns.cpu()
        which = None if picked is None else self.layer_of(picked)
        vals, scores, order = [], [], []
        for li, layer in enumerate(self.layers):
            z = acts[layer.pre]
            if picked is not None and which is not None:  # only the requested neurons (maps are large)
                pick = (which == li).nonzero().squeeze(1)
                if pick.numel() == 0:
                    continue
                order.append(pick)
                local = (picked[pick] - layer.offset).to(z.device)
            if self.kind is NeuronKind.CHANNEL and z.dim() == 4:
                v = z.clamp(min=0).mean(dim=(2, 3))
                s = torch.where(v > 0, v, z.amax(dim=(2, 3)))
                if which is not None:
                    v, s = v[:, local], s[:, local]
            else:
                s = z.flatten(1) if which is None else z.flatten(1)[:, local]
                v = s.clamp(min=0)
                s = torch.where(v > 0, v, s)
            vals.append(v)
            scores.append(s)
        if not vals:
            empty = x.new_zeros((x.shape[0], 0), dtype=self.graph.dtype)
            return empty, empty.clone()
        value, score = torch.cat(vals, dim=1), torch.cat(scores, dim=1)
        if picked is not None:  # back to the order of ``columns``
            inv = torch.empty(picked.numel(), dtype=torch.int64)
            inv[torch.cat(order)] = torch.arange(picked.numel())
            value, score = value[:, inv.to(value.device)], score[:, inv.to(value.device)]
        return value, score


def describe(layers: Sequence[Layer], kind: NeuronKind | str, neuron: int) -> str:
    """``layer[c]`` (channel, dense unit) or ``layer[c,h,w]`` (element) of neuron ``neuron``."""
    layer = next(layer for layer in layers if layer.offset <= neuron < layer.offset + layer.count)
    local = neuron - layer.offset
    if NeuronKind.parse(kind) is NeuronKind.ELEMENT and len(layer.shape) == 3:
        _, h, w = layer.shape
        return f"{layer.name}[{local // (h * w)},{local // w % h},{local % w}]"
    return f"{layer.name}[{local}]"


def gradients(neurons: Neurons, x: Tensor, cols: Tensor) -> Tensor:
    """``∂ pre_u(x_r) / ∂ x_r`` for row ``r`` and its neuron ``u = cols[r]``: inputs ``x``
    ``(R, C, H, W)``, neuron indices ``cols`` ``(R,)`` → ``(R, C, H, W)``. ``pre_u`` is the
    neuron's pre-activation (element) or its mean over ``(H, W)`` (channel)."""
    x = x.detach().clone().requires_grad_(True)
    starts = torch.tensor([layer.offset for layer in neurons.layers])
    which = torch.searchsorted(starts, cols.cpu(), right=True) - 1
    with torch.enable_grad():
        acts = neurons.graph.activations(x, {layer.pre for layer in neurons.layers})
        total = x.new_zeros(())
        for li, layer in enumerate(neurons.layers):
            rows = (which == li).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            z = acts[layer.pre]
            if neurons.kind is NeuronKind.CHANNEL and z.dim() == 4:
                z = z.mean(dim=(2, 3))
            local = (cols.cpu()[rows] - layer.offset).to(z.device)
            total = total + z.flatten(1)[rows.to(z.device), local].sum()
        (grad,) = torch.autograd.grad(total, x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad.detach()
