"""Counterexample search inside boxes: centre, corners, random points and projected
gradient descent on the margin. Every hit is re-checked with a plain forward pass of the
original model (``argmax != label``), so a reported counterexample is always genuine.
"""

from __future__ import annotations

import torch
from torch import Tensor

from l0tre.certify.bounds import free_coordinates
from l0tre.certify.target import Target

__all__ = ["min_margin", "search_counterexamples"]


def min_margin(target: Target, x: Tensor, labels: Tensor) -> Tensor:
    """``min_{k≠label} z_label - z_k`` ``(N,)`` of the original model in its own precision
    (differentiable), as a tensor of ``x``'s dtype and device."""
    m = target.margins(x, labels)
    m = m.scatter(1, labels.view(-1, 1).to(m.device), float("inf")).min(1).values
    return m.to(device=x.device, dtype=x.dtype)


def _corners(lo: Tensor, hi: Tensor, max_dims: int, n_random: int, grid: int,
             gen: torch.Generator) -> Tensor:
    """Points ``(P, B, *shape)``: a ``grid``-point grid per free coordinate when the boxes
    have at most 2 (and ``grid ≥ 2``), all ``2^n`` corners when ``n ≤ max_dims``, else
    ``n_random`` random corners."""
    b = lo.shape[0]
    free, valid = free_coordinates(lo, hi)
    n = free.shape[1]
    if n <= 2 and grid >= 2:
        axis = torch.linspace(0, 1, grid, dtype=lo.dtype, device=lo.device)
        bits = torch.cartesian_prod(*([axis] * n)).view(-1, n)
        bits = bits.unsqueeze(1).expand(-1, b, n)
    elif n <= max_dims:
        codes = torch.arange(2 ** n, device=lo.device)
        bits = ((codes.view(-1, 1) >> torch.arange(n, device=lo.device)) & 1).to(lo.dtype)
        bits = bits.unsqueeze(1).expand(-1, b, n)
    elif n_random > 0:
        bits = torch.randint(0, 2, (n_random, b, n), generator=gen).to(device=lo.device,
                                                                         dtype=lo.dtype)
    else:
        return lo.new_zeros((0, *lo.shape))
    p = bits.shape[0]
    lo_f, hi_f = lo.flatten(1), hi.flatten(1)
    lo_g, hi_g = lo_f.gather(1, free), hi_f.gather(1, free)
    vals = torch.where(valid, lo_g + bits * (hi_g - lo_g), lo_g)  # (P, B, n)
    pts = lo_f.unsqueeze(0).expand(p, *lo_f.shape).clone()
    pts.scatter_(2, free.unsqueeze(0).expand(p, *free.shape), vals)
    return pts.view(p, *lo.shape)


def _pgd(target: Target, lo: Tensor, hi: Tensor, labels: Tensor, start: Tensor, steps: int
         ) -> tuple[Tensor, Tensor]:
    """Minimise the margin from ``start`` by signed-gradient steps projected onto the box.
    Returns the best points ``(B, *shape)`` and their margins ``(B,)``."""
    x = start.clone()
    width = hi - lo
    best_x = x.clone()
    with torch.no_grad():
        best_m = min_margin(target, x, labels)
    for step in range(steps):
        x.requires_grad_(True)
        with torch.enable_grad():
            m = min_margin(target, x, labels)
            (grad,) = torch.autograd.grad(m.sum(), x)
        size = 0.5 * width * (1.0 - step / max(1, steps)) + 1e-3 * width
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x.detach() - size * grad.sign(), lo), hi)
            m = min_margin(target, x, labels)
            better = m < best_m
            best_m = torch.where(better, m, best_m)
            best_x[better] = x[better]
    return best_x, best_m


def _best_candidates(target: Target, lo: Tensor, hi: Tensor, labels: Tensor, corner_dims: int, n_random: int,
                     grid: int, seed: int) -> tuple[Tensor, Tensor]:
    """The smallest margin ``(B,)`` over each box's centre, corners, grid and random points,
    and the point ``(B, C, H, W)`` where it is reached."""
    b = lo.shape[0]
    gen = torch.Generator().manual_seed(seed)
    centre = (lo + hi) / 2
    corners = _corners(lo, hi, corner_dims, n_random, grid, gen)
    rand = lo + (hi - lo) * torch.rand((n_random, *lo.shape), generator=gen,
                                      dtype=lo.dtype).to(lo.device)
    cands = torch.cat([centre.unsqueeze(0), corners, rand])  # (P, B, ...)
    p = cands.shape[0]
    with torch.no_grad():
        step = max(1, 4096 // max(1, b))
        margins = torch.cat([
            min_margin(target, cands[i:i + step].flatten(0, 1), labels.repeat(min(step, p - i)))
            for i in range(0, p, step)
        ]).view(p, b)
    best_m, best_i = margins.min(0)
    return best_m, cands[best_i, torch.arange(b, device=lo.device)].clone()


def search_counterexamples(
    target: Target,
    lo: Tensor,
    hi: Tensor,
    labels: Tensor,
    *,
    steps: int = 10,
    corner_dims: int = 4,
    n_random: int = 2,
    grid: int = 5,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Look for ``x ∈ [lo, hi]`` with ``argmax f(x) != label``.

    Args:
        target: the model.
        lo, hi: boxes ``(B, C, H, W)`` in pixel space (graph dtype and device).
        labels: ``(B,)``.
        steps: projected-gradient steps (0 disables the gradient search).
        corner_dims: enumerate all corners up to this many free coordinates.
        n_random: random corners (beyond ``corner_dims``) and random interior points.
        grid: points per coordinate of a grid for boxes with at most 2 free coordinates.
        seed: for the random points.

    Returns:
        ``found`` ``(B,)`` BoolTensor and ``x`` ``(B, C, H, W)`` (the best candidate; a genuine
        counterexample, re-checked by a forward pass of the original model, where found).
    """
    b = lo.shape[0]
    if b == 0:
        return torch.zeros(0, dtype=torch.bool, device=lo.device), lo.clone()
    best_m, best_x = _best_candidates(target, lo, hi, labels, corner_dims, n_random, grid, seed)
    if steps > 0:
        # a gradient search from the best candidate (not for boxes of at most 2 free
        # coordinates, which the grid covers, nor where that is already a hit)
        todo = (best_m > 0) & ((hi > lo).flatten(1).sum(1) > 2)
        if bool(todo.any()):
            x, m = _pgd(target, lo[todo], hi[todo], labels[todo], best_x[todo], steps)
            idx = torch.nonzero(todo).flatten()
            better = m < best_m[idx]
            best_m[idx[better]] = m[better]
            best_x[idx[better]] = x[better]
    # re-check in the model's own precision, inside the box
    best_x = best_x.to(target.model_dtype).to(lo.dtype)
    inside = ((best_x >= lo) & (best_x <= hi)).flatten(1).all(1)
    found = torch.zeros(b, dtype=torch.bool, device=lo.device)
    cand = (best_m <= 1e-6) & inside
    if bool(cand.any()):
        pred = target.predict(best_x[cand]).to(lo.device)
        found[cand] = pred != labels[cand]
    return found, best_x
