"""Upper bounds: apply subspace solutions cumulatively, in sensitivity order.

For each input, subsets are taken in order; a prefix ``i`` sets every feature of subsets
``0..i`` to its solution value (a feature already set keeps its earlier value). All prefixes
are evaluated in batches; the first misclassified prefix is an adversarial example.
"""

from __future__ import annotations

import torch

from ..classifier import Classifier
from ..objectives import Objective
from .features import FeatureSpace

__all__ = ["GALLOP_START", "accumulate"]

GALLOP_START = 8  # prefixes a galloping input evaluates in its first call

_BIG = torch.iinfo(torch.int64).max


def accumulate(
    model: Classifier,
    objective: Objective,
    space: FeatureSpace,
    x0: torch.Tensor,
    ref: torch.Tensor,
    feats: torch.Tensor,
    vals: torch.Tensor,
    present: torch.Tensor,
    *,
    batch_size: int,
    gallop: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Find the first adversarial prefix per input.

    Prefixes are evaluated in order. Without ``gallop``, ``batch_size`` per call are shared by the
    inputs still searching. With ``gallop`` each input evaluates as many new prefixes per round as
    it has evaluated so far (at least ``GALLOP_START``, at most ``batch_size``), in model calls of
    ``batch_size`` rows: an input whose first adversarial prefix is the ``m``-th costs at most
    ``max(GALLOP_START, 2m)`` evaluations, and its count does not depend on which other inputs
    are searched with it (so neither on shards nor on work units). Either way the result is the
    same: only how far past the first hit is evaluated changes.

    Args:
        x0: ``(Na, C, H, W)`` originals (model device).
        ref: ``(Na,)`` references.
        feats: ``(Na, K, t)`` ordered subsets (feature indices).
        vals: ``(Na, K, t, Cf)`` their solution values.
        present: ``(Na, K)`` which of the K slots hold a subset.

    Returns:
        ``found`` ``(Na,)`` bool, ``x_adv`` ``(Na, C, H, W)`` (x0 where not found), evaluations.
    """
    na, k, t = feats.shape
    dev = x0.device
    n = space.n
    orig = space.values(x0)  # (Na, n, Cf)
    pos = torch.arange(k * t, device=dev).view(1, k, t).expand(na, k, t)
    pos = torch.where(present.unsqueeze(2), pos, torch.full_like(pos, _BIG)).reshape(na, -1)
    first = torch.full((na, n), _BIG, dtype=torch.int64, device=dev)
    first.scatter_reduce_(1, feats.reshape(na, -1), pos, "amin")
    is_set = first < _BIG
    first_k = torch.where(is_set, first // t, torch.full_like(first, _BIG))
    flat_vals = vals.reshape(na, k * t, -1)
    value = flat_vals.gather(1, first.clamp_max(k * t - 1).unsqueeze(2).expand(-1, -1, flat_vals.shape[2]))
    value = torch.where(is_set.unsqueeze(2), value, orig)
    # distinct prefixes: the sorted distinct first_k values per input
    levels = torch.sort(first_k, dim=1).values  # (Na, n), BIG at the end
    distinct = torch.ones_like(levels, dtype=torch.bool)
    distinct[:, 1:] = levels[:, 1:] != levels[:, :-1]
    distinct &= levels < _BIG
    counts = distinct.sum(1)
    # compact distinct levels to the left
    order = torch.argsort((~distinct).to(torch.int8), dim=1, stable=True)
    levels = levels.gather(1, order)

    found = torch.zeros(na, dtype=torch.bool, device=dev)
    x_adv = x0.clone()
    evaluations = 0
    cursor = torch.zeros(na, dtype=torch.int64, device=dev)
    while True:
        active = (~found) & (cursor < counts)
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        if gallop:  # each input's own schedule, whatever else is searching
            own = cursor[idx].clamp(GALLOP_START, max(batch_size, 1))
        else:
            own = torch.full_like(idx, max(1, batch_size // idx.numel()))
        steps = torch.arange(int(own.max()), device=dev)
        col = cursor[idx].unsqueeze(1) + steps  # (A, width)
        ok = (col < counts[idx].unsqueeze(1)) & (steps < own.unsqueeze(1))
        rows_a = idx.unsqueeze(1).expand_as(col)[ok]
        rows_l = levels[rows_a, col[ok]]
        succ = torch.cat([
            objective.evaluate(model, _prefixes(space, x0, value, orig, first_k, rows_a[r0:r0 + batch_size],
                                                rows_l[r0:r0 + batch_size]), ref[rows_a[r0:r0 + batch_size]]
                               ).success.to(dev)
            for r0 in range(0, rows_a.shape[0], max(batch_size, 1))])
        evaluations += int(rows_a.shape[0])
        # first success per input in this call (rows are ordered by input then level)
        row_pos = torch.arange(rows_a.shape[0], device=dev)
        first_row = torch.full((na,), _BIG, dtype=torch.int64, device=dev).scatter_reduce(
            0, rows_a[succ], row_pos[succ], "amin"
        )
        hit = first_row < _BIG
        if bool(hit.any()):
            h = hit.nonzero().squeeze(1)
            x_adv[h] = _prefixes(space, x0, value, orig, first_k, h, rows_l[first_row[h]]).to(x_adv.dtype)
            found |= hit
        cursor[idx] += own
    return found, x_adv, evaluations


def _prefixes(space: FeatureSpace, x0: torch.Tensor, value: torch.Tensor, orig: torch.Tensor,
              first_k: torch.Tensor, rows_a: torch.Tensor, rows_l: torch.Tensor) -> torch.Tensor:
    """Images ``(R, C, H, W)`` of prefixes: input ``rows_a[r]`` with every feature whose first
    subset is at most ``rows_l[r]`` set to its value ``value`` ``(Na, n, Cf)``."""
    mask = first_k[rows_a] <= rows_l.unsqueeze(1)  # (R, n)
    v = torch.where(mask.unsqueeze(2), value[rows_a], orig[rows_a])
    return space.images(v, base=x0[rows_a])
