"""Batched ascent for many open neurons at once: one row per *group* of target neurons.

A row ``r`` is an input ``x_r`` ``(C, H, W)`` and its targets ``targets[r]`` ``(k,)`` (global
neuron indices, ``-1`` = unused slot). One forward and backward pass over ``R`` rows gives the
gradient of every row's own objective, because rows are independent inputs:

    objective_r = Σ_j min(score_rj − threshold, margin)

with ``score_rj`` the firing score of target ``j`` on ``x_r`` (the largest pre-activation
element of a conv channel, the pre-activation of an element or a dense unit). The clip at
``margin`` stops a target that fires well from pulling further, so the ascent turns to the
others of its group.

The ascent is Adam on an unconstrained parametrisation of the input box,
``x = lo + (hi − lo)·sigmoid(w)``, so every iterate lies in the box; the point of each row with
most firing targets (then highest objective) is kept. What the rows cover is decided later by a
separate forward pass of the rounded, sparsified test (:mod:`.reach`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from .neurons import NeuronKind, Neurons

__all__ = ["AscentSettings", "GroupSettings", "ascend", "group_scores", "lattice_groups", "snap"]


@dataclass(frozen=True)
class AscentSettings:
    """``steps`` Adam steps of learning rate ``lr`` on the logits of the box; ``margin`` the
    clip of each target's term (pre-activation units); ``grid_steps`` further steps on the
    grid (straight-through: the objective and its gradient are taken at the point rounded to
    the ε-grid, the update goes to the continuous logits), which repair what rounding breaks
    for barely firing targets (``0``: none)."""

    steps: int = 60
    lr: float = 0.1
    margin: float = 0.05
    grid_steps: int = 0


def group_scores(neurons: Neurons, x: Tensor, targets: Tensor, threshold: float = 0.0, *,
                 margin: float = 0.05, grad: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Values, firing scores and (with ``grad``) the objective's gradient.

    Args:
        x: ``(R, C, H, W)`` inputs.
        targets: ``(R, k)`` global neuron indices, ``-1`` for an unused slot.

    Returns:
        ``value`` ``(R, k)`` (the neuron's value, ``-inf`` in unused slots), ``score`` ``(R, k)``
        (``-inf`` in unused slots) and ``∂ objective_r / ∂ x_r`` ``(R, C, H, W)`` (empty
        without ``grad``).
    """
    z = x.detach().clone().requires_grad_(grad)
    dev = x.device
    tg = targets.to(dev)
    used = tg >= 0
    layer_of = neurons.layer_of(tg.clamp(min=0))
    value = torch.full(tg.shape, float("-inf"), dtype=x.dtype, device=dev)
    score = torch.full(tg.shape, float("-inf"), dtype=x.dtype, device=dev)
    with torch.set_grad_enabled(grad):
        acts = neurons.graph.activations(z, {layer.pre for layer in neurons.layers})
        total = z.new_zeros(())
        for li, layer in enumerate(neurons.layers):
            here = used & (layer_of == li)
            if not bool(here.any()):
                continue
            a = acts[layer.pre]
            local = torch.where(here, tg - layer.offset, 0)
            if neurons.kind is NeuronKind.CHANNEL and a.dim() == 4:
                s_all, v_all = a.flatten(2).amax(dim=2), a.clamp(min=0).mean(dim=(2, 3))  # (R, C)
            else:
                s_all = a.flatten(1)
                v_all = s_all.clamp(min=0)
            s, v = s_all.gather(1, local), v_all.gather(1, local)
            score = torch.where(here, s.detach(), score)
            value = torch.where(here, v.detach(), value)
            total = total + torch.where(here, (s - threshold).clamp(max=margin), 0).sum()
        g = torch.autograd.grad(total, z, allow_unused=True)[0] if grad else None
    if not grad:
        return value, score, x.new_zeros(0)
    return value, score, torch.zeros_like(x) if g is None else g.detach()


def snap(x: Tensor, values: Tensor) -> Tensor:
    """Each coordinate of ``x`` rounded to the nearest of the sorted grid ``values`` ``(G,)``."""
    v = values.to(device=x.device, dtype=x.dtype)
    i = torch.bucketize(x.contiguous(), ((v[1:] + v[:-1]) / 2).contiguous())
    return v[i]


def ascend(neurons: Neurons, x0: Tensor, targets: Tensor, bounds: tuple[float, float], threshold: float,
           s: AscentSettings, deadline: float | None = None, grid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Adam ascent of each row's objective over the box from ``x0`` ``(R, C, H, W)``; with
    ``grid`` (sorted per-coordinate grid values ``(G,)``) and ``s.grid_steps``, then
    straight-through steps on the grid from the best continuous point.

    Returns:
        the best point per row ``(R, C, H, W)`` (most targets with ``value > threshold``, then
        the highest clipped objective; with grid steps, the best point *on the grid*) and its
        number of firing targets ``(R,)``.
    """
    best, best_n = _adam(neurons, x0, targets, bounds, threshold, s, s.steps, deadline, None)
    if grid is None or s.grid_steps <= 0:
        return best, best_n
    return _adam(neurons, best, targets, bounds, threshold, s, s.grid_steps, deadline, grid)


def _adam(neurons: Neurons, x0: Tensor, targets: Tensor, bounds: tuple[float, float], threshold: float,
          s: AscentSettings, steps: int, deadline: float | None, grid: Tensor | None) -> tuple[Tensor, Tensor]:
    """``steps`` Adam steps from ``x0``; with ``grid``, evaluated at the rounded points."""
    lo, hi = bounds
    span = hi - lo
    eps = 1e-4
    w = torch.logit(((x0 - lo) / span).clamp(eps, 1 - eps)).detach()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    b1, b2 = 0.9, 0.999
    best = x0.clone() if grid is None else snap(x0, grid)
    best_key = torch.full((x0.shape[0],), float("-inf"), dtype=torch.float64, device=x0.device)
    best_n = torch.zeros(x0.shape[0], dtype=torch.int64, device=x0.device)
    for step in range(steps + 1):
        x = lo + span * torch.sigmoid(w)
        if grid is not None:
            x = snap(x, grid) if step > 0 else best
        value, score, g = group_scores(neurons, x, targets, threshold, margin=s.margin, grad=True)
        n_fire = (value > threshold).sum(dim=1)
        obj = torch.where(torch.isfinite(score), (score - threshold).clamp(max=s.margin), 0).sum(dim=1)
        key = n_fire.double() * 1e6 + obj.double().clamp(-1e5, 1e5)
        better = key > best_key
        best[better], best_key[better], best_n[better] = x[better].detach(), key[better], n_fire[better]
        if step == steps or (deadline is not None and time.monotonic() > deadline):
            break
        sg = torch.sigmoid(w)
        gw = g * span * sg * (1 - sg)  # chain rule through the sigmoid
        m = b1 * m + (1 - b1) * gw
        v = b2 * v + (1 - b2) * gw * gw
        mh, vh = m / (1 - b1 ** (step + 1)), v / (1 - b2 ** (step + 1))
        w = w + s.lr * mh / (vh.sqrt() + 1e-8)
    return best, best_n


def lattice_groups(neurons: Neurons, cols: Tensor, stride: int, max_group: int) -> Tensor:
    """Open neurons ``cols`` ``(U,)`` split into groups ``(G, k)`` (``-1`` padded).

    Element neurons of one channel are grouped by their position modulo ``stride`` (targets of a
    group are ``stride`` apart, so their receptive fields overlap little and one input can fire
    them all), at most ``max_group`` per group; channels and dense units are one group each.
    """
    layer_of = neurons.layer_of(cols)
    cells = stride * stride
    keys = cols * cells  # dense units and channels: one group each
    for li, layer in enumerate(neurons.layers):
        here = layer_of == li
        local = cols[here] - layer.offset
        if neurons.kind is NeuronKind.ELEMENT and len(layer.shape) == 3:
            _, h, w = layer.shape
            ch, pos = local // (h * w), local % (h * w)
            cell = (pos // w % stride) * stride + pos % w % stride
            keys[here] = (layer.offset + ch) * cells + cell  # unique per (channel, cell)
    order = torch.argsort(keys, stable=True)
    keys, cols = keys[order], cols[order]
    _, counts = torch.unique_consecutive(keys, return_counts=True)
    groups: list[Tensor] = []
    for chunk in torch.split(cols, counts.tolist()):
        groups.extend(torch.split(chunk, max_group))
    k = max((len(gp) for gp in groups), default=1)
    out = torch.full((len(groups), k), -1, dtype=torch.int64)
    for i, gp in enumerate(groups):
        out[i, :len(gp)] = gp
    return out


@dataclass(frozen=True)
class GroupSettings:
    """The batched phase (:func:`group_phase`): ``rounds`` passes over the neurons still open
    (round ``r`` starts each group from its ``r``-th closest seed, with groups of at most
    ``max_group >> r`` targets and ``(r + 1)·ascent.steps`` steps); groups of at most
    ``max_group`` targets ``stride`` apart (:func:`lattice_groups`); ``rows`` groups per ascent
    batch; ``sparse_rows`` (seed, target) rows per sparsification batch with ``max_reverts``
    revert steps; ``ascent`` the optimiser; ``from_tests``: the tests kept so far are starting
    points too (:func:`.reach.group_starts`)."""

    rounds: int = 5
    stride: int = 4
    max_group: int = 64
    rows: int = 64
    sparse_rows: int = 256
    max_reverts: int = 24
    ascent: AscentSettings = AscentSettings(grid_steps=15)
    from_tests: bool = True

