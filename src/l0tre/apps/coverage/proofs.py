"""Tighter unreachability proofs: backward (CROWN) bounds of the still-open neurons.

:func:`~l0tre.apps.coverage.core.unreachable_neurons` bounds every neuron by intervals over the
whole input box, which is cheap and loose in deep networks. For the few neurons the search
leaves open, :func:`tighten_unreachable` bounds each pre-activation element with a backward
linear (CROWN) pass on the model truncated at that layer
(:func:`l0tre.certify.objective.neuron_target`), with interval (``"ibp"``) or CROWN (``"crown"``)
bounds of the earlier layers as intermediate bounds, batched per layer, and intersects the
result with the interval bounds. A neuron is proven unreachable when its value's upper bound
(the mean over ``(H, W)`` of ``max(u, 0)`` for a channel, ``max(u, 0)`` for an element or a
dense unit), plus :data:`~l0tre.apps.coverage.core.PROOF_MARGIN`, is ``≤ threshold``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ...certify.graph import Graph
from ...certify.hidden import hidden_bounds
from ...certify.methods import BoundOptions, Intermediate
from ...certify.objective import neuron_target
from .neurons import NeuronKind, Neurons

__all__ = ["ProofSettings", "TightProof", "tighten_unreachable"]

#: added to the upper bounds before comparing with the threshold (float64 bounds, float32 model)
MARGIN = 1e-6


@dataclass(frozen=True)
class ProofSettings:
    """``intermediate``: bounds of the earlier layers' pre-activations (``"ibp"`` or ``"crown"``;
    ``"crown"`` is tighter and much slower over the whole box); ``max_rows``: pre-activation
    elements per backward pass; ``time_limit``: seconds for all layers (layers not reached keep
    their interval bounds); ``max_memory``: bytes per bound pass. Then, for the element (or
    dense) neurons still not proven whose receptive field has at most ``exact_inputs`` input
    coordinates, the exact maximum over the box by the MILP of their cone
    (:func:`.cone_lp.lp_upper` with ``exact``; at most ``exact_neuron_time`` s each and
    ``exact_time`` s in all; ``0``: not run); cones equal up to translation are solved once."""

    intermediate: str = "ibp"
    max_rows: int = 1024
    time_limit: float = 300.0
    max_memory: int = 1 << 31
    exact_time: float = 120.0
    exact_neuron_time: float = 20.0
    exact_inputs: int = 256

    def __post_init__(self) -> None:
        if Intermediate.parse(self.intermediate) not in (Intermediate.IBP, Intermediate.CROWN):
            raise ValueError(f"intermediate: expected 'ibp' or 'crown', got {self.intermediate!r}")
        if self.max_rows < 1 or self.time_limit <= 0 or self.max_memory < 1:
            raise ValueError(f"ProofSettings: expected max_rows >= 1, time_limit > 0, max_memory >= 1, got "
                             f"{self.max_rows}, {self.time_limit}, {self.max_memory}")


@dataclass(frozen=True)
class TightProof:
    """``proven``: ``(U,)`` bool per neuron asked; ``upper``: ``(U,)`` the best upper bound of each
    neuron's value (``inf`` where its layer was not reached in time); ``seconds``;
    ``exact_proven``: how many of the proven were proven by the MILP step."""

    proven: Tensor
    upper: Tensor
    seconds: float
    exact_proven: int = 0


def _elements(neurons: Neurons, layer_index: int, local: Tensor) -> tuple[Tensor, int]:
    """Flat pre-activation elements of the given neurons of one layer ``(U·k,)``, and ``k``
    (elements per neuron: ``H·W`` for a conv channel, else 1)."""
    layer = neurons.layers[layer_index]
    if neurons.kind is NeuronKind.CHANNEL and len(layer.shape) == 3:
        k = layer.shape[1] * layer.shape[2]
        return (local.view(-1, 1) * k + torch.arange(k).view(1, -1)).flatten(), k
    return local.clone(), 1


def _upper(graph: Graph, node: int, elements: Tensor, lo: Tensor, hi: Tensor, opts: BoundOptions, rows: int,
           deadline: float) -> Tensor | None:
    """Upper bounds ``(E,)`` of pre-activation ``elements`` of ``node`` over the box; ``None`` if the
    deadline passes first."""
    out = []
    for s in range(0, elements.numel(), rows):
        if time.monotonic() > deadline:
            return None
        part = elements[s:s + rows]
        target = neuron_target(graph, [(node, part)], 0.0, (float(lo.min()), float(hi.max())))
        margin = target.margin_bounds(lo, hi, torch.zeros(1, dtype=torch.int64), opts)  # 0 - v_e
        out.append(-margin[0, 1:].cpu())
    return torch.cat(out)


def tighten_unreachable(graph: Graph, neurons: Neurons, cols: Tensor, threshold: float,
                        bounds: tuple[float, float], settings: ProofSettings | None = None) -> TightProof:
    """Backward bounds of neurons ``cols`` ``(U,)`` over the whole input box (module docstring).

    Args:
        graph: the model's graph in float64 (node indices as in ``neurons.graph``).
        neurons: the neuron definition; ``cols`` indices into it.
        threshold: a neuron fires when its value is ``> threshold``.
        bounds: the pixel range of every input coordinate.
        settings: :class:`ProofSettings`.
    """
    s = settings or ProofSettings()
    start = time.monotonic()
    cols = cols.cpu().to(torch.int64)
    proven = torch.zeros(cols.numel(), dtype=torch.bool)
    upper = torch.full((cols.numel(),), float("inf"), dtype=torch.float64)
    shape = tuple(int(d) for d in graph.input_shape)
    lo = torch.full((1, *shape), float(bounds[0]), dtype=graph.dtype)
    hi = torch.full((1, *shape), float(bounds[1]), dtype=graph.dtype)
    opts = BoundOptions(method="crown", intermediate=s.intermediate, max_memory=s.max_memory)
    which = neurons.layer_of(cols)
    for li in torch.unique(which).tolist():
        pick = (which == li).nonzero().squeeze(1)
        layer = neurons.layers[li]
        elements, k = _elements(neurons, li, cols[pick] - layer.offset)
        ub = _upper(graph, layer.pre, elements, lo, hi, opts, s.max_rows, start + s.time_limit)
        if ub is None:
            break
        ibp = hidden_bounds(graph, lo, hi, [layer.pre], intermediate="ibp")[layer.pre][1][0].flatten().cpu()
        ub = torch.minimum(ub, ibp[elements])
        value = (ub + MARGIN).clamp(min=0).view(-1, k).mean(dim=1)
        upper[pick] = value
        proven[pick] = value <= threshold
    n_exact = 0
    if s.exact_time > 0 and neurons.kind is NeuronKind.ELEMENT:
        n_exact = _exact(graph, neurons, cols, threshold, bounds, s, proven, upper)
    return TightProof(proven, upper, time.monotonic() - start, n_exact)


def _small_field(graph: Graph, node: int, element: int, shape: tuple[int, ...], limit: int) -> bool:
    """Whether the input gradient of one pre-activation element at a random point touches at
    most ``limit`` input coordinates (a cheap lower bound of its cone's size)."""
    x = torch.rand((1, *shape), generator=torch.Generator().manual_seed(0), dtype=graph.dtype).requires_grad_(True)
    with torch.enable_grad():
        out = graph.activations(x, {node})[node].flatten()[element]
        (g,) = torch.autograd.grad(out, x)
    return int((g != 0).sum()) <= limit


def _exact(graph: Graph, neurons: Neurons, cols: Tensor, threshold: float, bounds: tuple[float, float],
           s: ProofSettings, proven: Tensor, upper: Tensor) -> int:
    """The MILP step (see :class:`ProofSettings`); updates ``proven`` / ``upper`` in place and
    returns how many it proved."""
    from .cone import build_cone, cone_bounds
    from .cone_lp import lp_upper

    end = time.monotonic() + s.exact_time
    shape = tuple(int(d) for d in graph.input_shape)
    seen: dict[bytes, float] = {}
    small: dict[int, bool] = {}
    count = 0
    which = neurons.layer_of(cols)
    for i in (~proven).nonzero().flatten().tolist():
        if time.monotonic() > end:
            break
        layer = neurons.layers[int(which[i])]
        local = int(cols[i]) - layer.offset
        if layer.pre not in small:
            small[layer.pre] = _small_field(graph, layer.pre, local, shape, s.exact_inputs)
        if not small[layer.pre]:
            continue
        cone = build_cone(graph, layer.pre, torch.tensor([local]))
        if cone.nodes[0].support.numel() > s.exact_inputs:
            continue
        key = cone.key()
        if key not in seen:
            _, pre = cone_bounds(cone, bounds)
            limit = max(1e-3, min(s.exact_neuron_time, end - time.monotonic()))
            seen[key] = lp_upper(cone, bounds, pre, exact=True, time_limit=limit)
        value = max(seen[key] + MARGIN, 0.0)
        upper[i] = min(float(upper[i]), value)
        if value <= threshold:
            proven[i] = True
            count += 1
    return count
