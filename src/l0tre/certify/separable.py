"""Level ``t = 2`` from single-feature bounds, for pairs of features that never meet.

Call two features *separable* when no output of a nonlinear operation (ReLU, max-pool) of
the graph depends — structurally, through non-zero weights — on both. Then the network is
*additively separable* in them: for every value ``v_i`` of feature ``i`` and ``v_j`` of ``j``

    f(x0 ⊕ v_i ⊕ v_j) = f(x0 ⊕ v_i) + f(x0 ⊕ v_j) − f(x0)

exactly (``x0 ⊕ v`` sets one feature, all channels of a pixel, and keeps the rest). Proof by
induction over the graph: every node value is a constant plus a function of ``v_i`` plus a
function of ``v_j``; affine nodes and additions keep that form, and a nonlinear node sees at
most one of the two parts, so its output is a function of one variable.

So the margin ``m_k = z_label − z_k`` over the pair's box has the exact minimum
``min m_k(v_i) + min m_k(v_j) − m_k(x0)``, and sound lower bounds ``L_ik ≤ min m_k(v_i)`` of
the *single-feature* boxes prove every separable pair with ``L_ik + L_jk − m_k(x0) > 0`` for
all ``k``. With ``n`` features that is ``n`` bound problems instead of ``n²/2``; each single
box is split into sub-boxes (refined only where a pair fails) so the ``L`` approach the exact
minima. The other way round, sampled single-feature minima ``U_ik`` with
``U_ik + U_jk − m_k(x0) < 0`` give a counterexample, re-checked on the model.

For convolutional bodies followed by a linear classifier (the paper's sDNN architecture)
most pairs are separable; a fully connected hidden layer mixes every pair, and then nothing
here applies (:func:`feature_overlaps` says so and :func:`l0tre.certify.certify_level` uses
its box covering instead).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from l0tre.certify import ops as O
from l0tre.certify.boxes import bound_margins, feature_count
from l0tre.certify.settings import CertifySettings
from l0tre.certify.target import Target

__all__ = ["PairOutcome", "SingleBounds", "certify_pairs_separable", "clean_margins", "coordinates", "feature_boxes",
           "feature_overlaps", "refine_singles"]

#: sub-boxes per feature at each refinement round (a feature with ``C`` free coordinates is
#: split into ``round(S ** (1 / C))`` parts per coordinate)
SPLITS = (1, 8, 64)


def _indicators(shape: tuple[int, ...], features: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(n, C, H, W)``: 1 on feature ``i`` (all channels of a pixel, or one element)."""
    c, h, w = shape
    n = feature_count((c, h, w), features)
    if features == "pixel":
        return torch.eye(n, dtype=dtype, device=device).view(n, 1, h, w).expand(n, c, h, w).contiguous()
    return torch.eye(n, dtype=dtype, device=device).view(n, c, h, w)


def feature_overlaps(target: Target, features: str = "pixel", max_memory: int = 1 << 30) -> Tensor | None:
    """``(n, n)`` BoolTensor: ``True`` where features ``i`` and ``j`` (or ``i == j``) reach a
    common output of a nonlinear operation; ``False`` pairs are additively separable (module
    docstring). ``None`` when the graph holds an operation whose structure is not known here,
    or when the footprints would need more than ``max_memory`` bytes."""
    graph = target.graph
    shape = tuple(graph.input_shape)
    if len(shape) != 3:
        return None
    n = feature_count((shape[0], shape[1], shape[2]), features)
    biggest = max(math.prod(node.shape) for node in graph.nodes)
    if 3 * n * biggest * torch.tensor([], dtype=graph.dtype).element_size() > max_memory:
        return None
    remaining = [len(c) for c in graph.consumers]
    values: dict[int, Tensor] = {0: _indicators(shape, features, graph.dtype, graph.device)}
    hits = torch.zeros((n, n), dtype=torch.float32, device=graph.device)
    for i, node in enumerate(graph.nodes):
        op = node.op
        if op is None:
            continue
        xs = [values[j] for j in node.inputs]
        nonlinear = isinstance(op, (O.ReluOp, O.MaxPoolOp))
        if nonlinear:
            y = op.forward(xs[0])  # max / relu of 0-1 indicators: 1 where any input is reached
        elif isinstance(op, O.AffineOp):
            y = op.abs_linear(xs[0])  # |L| · indicator > 0 exactly where a non-zero weight links
        elif isinstance(op, O.AddOp):
            y = sum((abs(c) * x for c, x in zip(op.coeffs, xs, strict=True)), torch.zeros_like(xs[0]))
        else:
            return None
        values[i] = (y > 0).to(graph.dtype)
        if nonlinear:
            f = values[i].flatten(1).to(torch.float32)
            hits += f @ f.T
        for j in node.inputs:
            remaining[j] -= 1
            if remaining[j] == 0:
                del values[j]
    return (hits > 0) | torch.eye(n, dtype=torch.bool, device=graph.device)


def coordinates(shape: tuple[int, int, int], features: str, feats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Channel ``(m, C')``, row and column ``(m,)`` of each feature's free coordinates
    (``C' = C`` for pixels, 1 for elements)."""
    c, h, w = shape
    if features == "pixel":
        ch = torch.arange(c, device=feats.device).expand(feats.shape[0], c)
        return ch, feats // w, feats % w
    return (feats // (h * w)).view(-1, 1), (feats % (h * w)) // w, feats % w


def _grid(parts: int, cf: int, bounds: tuple[float, float], dtype: torch.dtype, device: torch.device,
          corners: bool = False) -> tuple[Tensor, Tensor]:
    """Cells ``(lo, hi)`` ``(parts^cf, cf)`` of a grid splitting each of ``cf`` coordinates of
    ``bounds`` into ``parts`` intervals; with ``corners`` the grid's ``(parts + 1)^cf`` corner
    points instead (``lo == hi``)."""
    steps = parts + 1 if corners else parts
    idx = torch.cartesian_prod(*[torch.arange(steps, device=device)] * cf).view(-1, cf).to(dtype)
    span = bounds[1] - bounds[0]
    lo = bounds[0] + span * idx / parts
    return (lo, lo) if corners else (lo, bounds[0] + span * (idx + 1) / parts)


def _place(x0: Tensor, features: str, feats: Tensor, values: Tensor) -> Tensor:
    """``(m · P, C, H, W)``: ``x0`` with feature ``feats[a]`` ``(m,)`` set to ``values[p]``
    ``(P, C')`` (feature-major order)."""
    shape = (int(x0.shape[0]), int(x0.shape[1]), int(x0.shape[2]))
    ch, rows, cols = coordinates(shape, features, feats)
    m, cf = ch.shape
    p = values.shape[0]
    out = x0.unsqueeze(0).repeat(m * p, 1, 1, 1)
    box = torch.arange(m * p, device=x0.device).view(m, p, 1).expand(m, p, cf)
    out[box, ch.view(m, 1, cf).expand(m, p, cf), rows.view(m, 1, 1).expand(m, p, cf),
        cols.view(m, 1, 1).expand(m, p, cf)] = values.view(1, p, cf).expand(m, p, cf)
    return out


def feature_boxes(
    x0: Tensor, features: str, feats: Tensor, parts: int, bounds: tuple[float, float],
) -> tuple[Tensor, Tensor]:
    """Sub-boxes ``(lo, hi)``, each ``(m · parts^C', C, H, W)``: every feature of ``feats``
    ``(m,)`` free over one cell of a grid that splits each of its ``C'`` coordinates (``C``
    channels of a pixel, 1 for an element) into ``parts`` equal intervals of ``bounds``
    (feature-major order)."""
    cf = int(x0.shape[0]) if features == "pixel" else 1
    c_lo, c_hi = _grid(parts, cf, bounds, x0.dtype, x0.device)
    return _place(x0, features, feats, c_lo), _place(x0, features, feats, c_hi)


@dataclass
class SingleBounds:
    """What is known about the margins over each single feature's box ``(n, K)``.

    Attributes:
        lower: sound lower bounds (the minimum over a grid of sub-boxes).
        upper: sampled margins (the smallest at the grid's corner points), with the values
            ``argpt`` ``(n, K, C')`` of the feature's ``C'`` coordinates where they were seen.
    """

    lower: Tensor
    upper: Tensor
    argpt: Tensor

    @classmethod
    def empty(cls, x0: Tensor, n: int, k: int, features: str) -> SingleBounds:
        """Nothing known yet about ``n`` features of ``x0`` ``(C, H, W)`` and ``K`` classes."""
        cf = x0.shape[0] if features == "pixel" else 1
        full = partial(torch.full, dtype=x0.dtype, device=x0.device)
        return cls(full((n, k), -math.inf), full((n, k), math.inf), full((n, k, cf), 0.0))


def clean_margins(target: Target, x0: Tensor, label: int) -> Tensor:
    """``z_label − z_k`` ``(K,)`` of the graph at ``x0`` (``0`` at the label)."""
    with torch.no_grad():
        z0 = target.graph.forward(x0.unsqueeze(0))[0]
    return z0[label] - z0


@dataclass
class PairOutcome:
    """Result of :func:`certify_pairs_separable`.

    Attributes:
        remaining: ``(R, 2)`` pairs ``i < j`` not proven here (all non-separable ones and
            the separable ones whose bounds stay too loose).
        proven: separable pairs proven.
        boxes: single-feature sub-boxes bounded.
        counterexample: a re-checked adversarial input ``(C, H, W)`` changing the two
            features of ``subset``, if one was found (then ``remaining`` is empty).
        timed_out: the deadline passed before the refinement finished.
    """

    remaining: Tensor
    proven: int
    boxes: int
    counterexample: Tensor | None = None
    subset: tuple[int, int] | None = None
    timed_out: bool = False


def certify_pairs_separable(
    target: Target, x0: Tensor, label: int, overlaps: Tensor, settings: CertifySettings, *, features: str,
    deadline: float, splits: tuple[int, ...] = SPLITS, max_candidates: int = 64,
) -> PairOutcome:
    """Prove the separable pairs of ``x0`` ``(C, H, W)`` (graph dtype and device) from
    single-feature bounds, refining the features of failing pairs (module docstring).
    ``overlaps``: from :func:`feature_overlaps`; ``deadline``: a ``time.perf_counter`` value."""
    lab = torch.tensor([label], device=target.graph.device)
    m0 = clean_margins(target, x0, label)
    pairs = torch.triu(~overlaps, diagonal=1).nonzero()  # (P, 2) separable
    close = torch.triu(overlaps, diagonal=1).nonzero()
    singles = SingleBounds.empty(x0, overlaps.shape[0], m0.shape[0], features)
    cf = x0.shape[0] if features == "pixel" else 1
    boxes = 0
    todo = torch.unique(pairs.flatten())
    for parts_total in splits:
        if todo.numel() == 0:
            break
        if time.perf_counter() > deadline:
            return PairOutcome(torch.cat([close, pairs]), 0, boxes, timed_out=True)
        parts = max(1, round(parts_total ** (1 / cf)))
        done = refine_singles(target, x0, lab, features, todo, parts, settings, singles, deadline)
        boxes += done
        if done < todo.shape[0] * parts**cf:
            return PairOutcome(torch.cat([close, pairs]), 0, boxes, timed_out=True)
        cex = _counterexample(target, x0, label, features, pairs, _pair_sums(singles.upper, pairs, m0), singles.argpt,
                              max_candidates)
        if cex is not None:
            return PairOutcome(pairs.new_zeros((0, 2)), 0, boxes, cex[0], cex[1])
        failing = pairs[_pair_sums(singles.lower, pairs, m0).min(1).values <= settings.margin_tol]
        todo = torch.unique(failing.flatten())
    ok = _pair_sums(singles.lower, pairs, m0).min(1).values > settings.margin_tol
    return PairOutcome(torch.cat([close, pairs[~ok]]), int(ok.sum()), boxes)


def _pair_sums(single: Tensor, pairs: Tensor, m0: Tensor) -> Tensor:
    """``(P, K)`` pair margins from single-feature margins ``single`` ``(n, K)`` (bounds or
    samples) by additivity: ``s_ik + s_jk − m0_k``."""
    return single[pairs[:, 0]] + single[pairs[:, 1]] - m0


def refine_singles(
    target: Target, x0: Tensor, lab: Tensor, features: str, feats: Tensor, parts: int, settings: CertifySettings,
    singles: SingleBounds, deadline: float,
) -> int:
    """Tighten the bounds of ``feats`` in ``singles``: ``lower`` with the ``parts``-grid's
    cells, ``upper`` and ``argpt`` with its corners; returns the number of sub-boxes bounded
    (fewer than all when ``deadline`` passed)."""
    cf = int(x0.shape[0]) if features == "pixel" else 1
    cells = parts**cf
    corners, _ = _grid(parts, cf, target.bounds, x0.dtype, x0.device, corners=True)
    per_chunk = max(1, 4096 // max(cells, corners.shape[0]))
    lower, upper, argpt = singles.lower, singles.upper, singles.argpt
    done = 0
    for s in range(0, feats.shape[0], per_chunk):
        if time.perf_counter() > deadline:
            return done
        fs = feats[s : s + per_chunk]
        lo, hi = feature_boxes(x0, features, fs, parts, target.bounds)
        lb = bound_margins(target, lo, hi, lab.expand(lo.shape[0]), settings)
        lower[fs] = torch.maximum(lower[fs], lb.view(fs.shape[0], cells, -1).min(1).values)
        with torch.no_grad():
            z = target.graph.forward(_place(x0, features, fs, corners))
        marg = (z[:, int(lab)].unsqueeze(1) - z).view(fs.shape[0], corners.shape[0], -1)
        best, where = marg.min(1)  # (m, K)
        better = best < upper[fs]
        upper[fs] = torch.where(better, best, upper[fs])
        argpt[fs] = torch.where(better.unsqueeze(2), corners[where], argpt[fs])
        done += int(fs.shape[0]) * cells
    return done


def _counterexample(
    target: Target, x0: Tensor, label: int, features: str, pairs: Tensor, ub: Tensor, argpt: Tensor,
    limit: int,
) -> tuple[Tensor, tuple[int, int]] | None:
    """Re-check the most promising sampled pairs (``ub < 0``) on the model."""
    worst, cls = ub.min(1)
    cand = (worst < 0).nonzero().flatten()
    if cand.numel() == 0:
        return None
    cand = cand[worst[cand].argsort()][:limit]
    shape = (int(x0.shape[0]), int(x0.shape[1]), int(x0.shape[2]))
    xs = x0.unsqueeze(0).repeat(cand.shape[0], 1, 1, 1)
    rows = torch.arange(cand.shape[0], device=x0.device)
    for side in (0, 1):
        f = pairs[cand, side]
        ch, r, c = coordinates(shape, features, f)
        xs[rows.view(-1, 1), ch, r.view(-1, 1), c.view(-1, 1)] = argpt[f, cls[cand]]
    pred = target.predict(xs)
    hit = (pred != label).nonzero().flatten()
    if hit.numel() == 0:
        return None
    i = int(hit[0])
    return xs[i], (int(pairs[cand[i], 0]), int(pairs[cand[i], 1]))
