"""Objective values of rows computed through an incremental chain, with exact re-checks.

* :func:`chain_values` — float32 chain outputs; rows within ``BOUNDARY_TOL`` of the decision
  boundary are recomputed with the plain forward pass.
* :class:`Screen` — rows screened by the low-precision copy's chain
  (:class:`~l0tre.execution.precision.Rechecked`); the close ones (and a probe) take the float32
  chain's values, so the screen never decides a row near the boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..classifier import Classifier
from ..execution.incremental import BOUNDARY_TOL, IncrementalCaches, IncrementalPrefix
from ..execution.pairs import PairTable
from ..execution.precision import Rechecked
from ..objectives import FromOutputs, Objective, ObjectiveValues, from_outputs_capability
from .features import FeatureKind, FeatureSpace
from .level import LevelContext

__all__ = ["Screen", "chain_raw", "chain_values", "checked_values", "exact_objective", "screening"]


def chain_values(
    model: Classifier, objective: Objective, fast: FromOutputs, inc: IncrementalPrefix, caches: IncrementalCaches,
    base: torch.Tensor, ref: torch.Tensor, space: FeatureSpace, a: torch.Tensor,
    feat: torch.Tensor, vals: torch.Tensor,
) -> ObjectiveValues:
    """Objective values of ``base[a]`` with features ``feat`` set to ``vals``, computed through the
    incremental chain; rows whose margin is within ``BOUNDARY_TOL`` of zero are re-checked with the
    plain forward pass.

    Args:
        caches: ``inc.base(base)``; base: ``(Na, C, H, W)`` images; ref: ``(Na,)`` references.
        a: ``(B,)`` row → image; feat: ``(B, t)`` feature indices; vals: ``(B, t, Cf)`` values.
    """
    raw = chain_raw(inc, caches, space, a, feat, vals)
    return checked_values(model, objective, fast, raw, base, ref, space, a, feat, vals)


def chain_raw(inc: IncrementalPrefix, caches: IncrementalCaches, space: FeatureSpace, a: torch.Tensor,
              feat: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """Raw outputs ``(B, K)`` through the incremental chain (arguments as :func:`chain_values`)."""
    full = space.full_index(feat)
    if space.kind is FeatureKind.PIXEL:
        return inc.outputs(caches, a, full, vals)
    hw = space.shape[1] * space.shape[2]
    return inc.outputs(caches, a, full % hw, vals, channel=full // hw)


def checked_values(
    model: Classifier, objective: Objective, fast: FromOutputs, raw: torch.Tensor, base: torch.Tensor,
    ref: torch.Tensor,
    space: FeatureSpace, a: torch.Tensor, feat: torch.Tensor, vals: torch.Tensor,
) -> ObjectiveValues:
    """Objective values from raw outputs ``(B, K)`` computed some fast way for the rows of
    :func:`chain_values`; rows within ``BOUNDARY_TOL`` of the boundary are recomputed exactly."""
    ov = fast.from_outputs(model, raw, ref[a])
    near = ov.score.abs() <= BOUNDARY_TOL * (1.0 + raw.abs().amax(dim=1))
    if bool(near.any()):
        idx = near.nonzero().squeeze(1)
        x = base[a[idx]].clone()
        space.scatter(x, feat[idx], vals[idx])
        ov = ov.with_rows(idx, objective.evaluate(model, x, ref[a[idx]]))
    return ov


@dataclass
class Screen:
    """Objective values of a unit's rows from low-precision chain outputs: the close rows (and a
    probe) take float32 chain values, themselves re-checked by the plain forward pass near the
    boundary (:func:`chain_values`)."""

    model: Classifier
    objective: Rechecked
    fast: FromOutputs  # the screen's inner objective, scoring raw outputs
    low: IncrementalPrefix  # the copy's chain
    chain: IncrementalPrefix  # the float32 chain
    caches: IncrementalCaches
    x0: torch.Tensor
    ref: torch.Tensor
    ctx: LevelContext
    subsets: torch.Tensor

    def values(self, raw: torch.Tensor, a: torch.Tensor, s: torch.Tensor, p: torch.Tensor) -> ObjectiveValues:
        """Values ``(B,)`` of rows ``(a, s, p)`` (input, subset, point; ``(B,)`` each) from their
        low-precision outputs ``raw`` ``(B, K)``."""
        def exact(idx: torch.Tensor) -> ObjectiveValues:
            i = idx.to(a.device)
            return chain_values(self.model, self.objective.objective, self.fast, self.chain, self.caches,
                                self.x0, self.ref, self.ctx.space, a[i], self.subsets[s[i]], self.ctx.values(p[i]))

        return self.objective.screen(self.model, raw, self.ref[a], exact)


def screening(
    model: Classifier, objective: Objective, incremental: IncrementalPrefix | None, pairs: Sequence[PairTable],
    ctx: LevelContext, x0: torch.Tensor, ref: torch.Tensor, subsets: torch.Tensor,
) -> Screen | None:
    """The :class:`Screen` of a unit when ``objective`` screens in low precision
    (:class:`~l0tre.execution.precision.Rechecked`), the float32 chain ``incremental`` is in use
    without pair tables and the copy has a chain of its own; else ``None``.

    Args:
        x0: ``(Na, C, H, W)`` originals; ref: ``(Na,)`` references; subsets: ``(S, t)`` the unit's
            subsets (feature indices).
    """
    if incremental is None or pairs or not isinstance(objective, Rechecked):
        return None
    fast = from_outputs_capability(objective.objective)
    low = None if fast is None else objective.low.chain(tuple(x0.shape[1:]), ctx.t)
    if fast is None or low is None:
        return None
    return Screen(model, objective, fast, low, incremental, incremental.base(x0), x0, ref, ctx, subsets)


def exact_objective(objective: Objective) -> Objective:
    """The objective whose values are exact: a low-precision screen's inner objective, else
    ``objective`` itself. Rows through the float32 chain take it: they are as cheap as the
    copy's full forward pass and need no screen (a search's single reverts, as the attack's)."""
    return objective.objective if isinstance(objective, Rechecked) else objective
