"""Continuous relaxation of the L0 search (the idea of σ-zero, Cinà et al. 2024): a candidate path.

A perturbation ``δ`` ``(B, C, H, W)`` is optimised with Adam on
``max(margin(x0 + δ), 0) + mean(δ² / (δ² + σ))`` (the second term a smooth count of changed
elements), the gradient normalised per row by its largest entry; after each step every element
with ``|δ| < τ`` is set to 0, where the per-row threshold ``τ`` grows while the row is adversarial
and shrinks while it is not. The adversarial iterate with the fewest changed features is kept per
row. Its values are continuous (inside the model's bounds); :func:`~.shards.search_shard`
tightens it with the engine's reverts and refines it like every other candidate.

The schedule (step size ``η`` cosine-annealed from ``η0`` to ``η0 / 10``, ``σ = 10⁻³``,
``τ0 = 0.3``, ``τ`` step ``0.01 η``, in units of the input range) follows the σ-zero paper's
defaults; the number of steps is the preset's ``relax_steps``.
"""

from __future__ import annotations

import math

import torch

from .searcher import Searcher

__all__ = ["relaxed"]

_SIGMA = 1e-3
_TAU0 = 0.3
_TAU_STEP = 0.01
_ETA0 = 1.0
_BETAS = (0.9, 0.999)
_CHECK_EVERY = 16  # steps between deadline checks


def relaxed(s: Searcher, rows: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Relaxed search for the inputs ``rows`` ``(B,)`` (runs ``steps`` steps or until the deadline).

    Returns:
        ``found`` ``(B,)`` and the sparsest adversarial iterate per row ``(B, C, H, W)`` (the
        original where none was found).
    """
    x0 = s.x0[rows]
    b = rows.shape[0]
    lo, hi = s.model.bounds
    span = hi - lo
    sigma = _SIGMA * span * span
    numel = x0[0].numel()
    delta = torch.zeros_like(x0)
    m1, m2 = torch.zeros_like(x0), torch.zeros_like(x0)
    tau = torch.full((b, 1, 1, 1), _TAU0 * span, dtype=x0.dtype, device=x0.device)
    best = x0.clone()
    best_l0 = torch.full((b,), s.space.n + 1, dtype=torch.int64, device=x0.device)
    eta = _ETA0
    for i in range(steps):
        if i % _CHECK_EVERY == 0 and s.deadline.passed():
            break
        xa = x0 + delta
        margin, g = s.margin_value_grad(xa, rows)
        adv = margin < 0
        l0 = s.space.changed(xa, x0).sum(1)
        better = adv & (l0 < best_l0)
        best_l0 = torch.where(better, l0, best_l0)
        best[better] = xa[better]
        # gradient of the loss: the hinge on the margin plus the smooth count
        grad = g * (margin > 0).to(g.dtype).view(-1, 1, 1, 1)
        grad = grad + 2 * sigma * delta / (delta.square() + sigma).square() / numel
        grad = grad / grad.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        m1.lerp_(grad, 1 - _BETAS[0])
        m2.mul_(_BETAS[1]).addcmul_(grad, grad, value=1 - _BETAS[1])
        denom = (m2 / (1 - _BETAS[1] ** (i + 1))).sqrt().add_(1e-8)
        delta = delta - eta * span * (m1 / (1 - _BETAS[0] ** (i + 1))) / denom
        delta = (x0 + delta).clamp(lo, hi) - x0
        eta = _ETA0 * (0.1 + 0.9 * (1 + math.cos(math.pi * (i + 1) / steps)) / 2)
        step = _TAU_STEP * eta * span
        tau = (tau + torch.where(adv, step, -step).view(-1, 1, 1, 1)).clamp(0.0, span)
        delta = torch.where(delta.abs() < tau, torch.zeros_like(delta), delta)
    return best_l0 <= s.space.n, best
