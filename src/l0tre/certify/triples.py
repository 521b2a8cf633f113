"""Level ``t = 3`` from connected components, for models that rarely mix distant features.

The argument of :mod:`l0tre.certify.separable` extends from two features to groups: when no
output of a nonlinear operation depends on features of two different groups ``G_1 … G_r``
(every cross-group pair is separable), every node value is a constant plus one function per
group, and the margin over the box of ``G_1 ∪ … ∪ G_r`` has the exact minimum

    m(x0) + Σ_p (min m over the box of G_p − m(x0)).

A ``3``-subset splits into the connected components of its *overlap graph* (features joined
when they meet in a nonlinear operation, :func:`~l0tre.certify.separable.feature_overlaps`):

* three components ``{a}, {b}, {c}`` — sound single-feature bounds ``L_a`` give the bound
  ``L_a + L_b + L_c − 2 m(x0)``;
* a close pair and a single ``{a, b}, {c}`` — ``L_ab + L_c − m(x0)`` with ``L_ab`` the pair's
  joint bound;
* one component (a *connected* triple) — bounded jointly, like any other box.

Writing ``d = L − m(x0)`` (``≤ 0``: the box contains ``x0``), a decomposed triple fails when
``Σ d ≤ τ = tol − m(x0)`` for some class. The failing ones are enumerated without looking at
all ``n³/6`` triples: a failing triple of singles has every member below ``τ − s₁ − s₂``
(``s₁ ≤ s₂`` the two smallest ``d``), and a failing (pair, single) combination needs
``d_ab ≤ τ − s₁``. Singles in failing combinations are refined (split into sub-boxes, as at
``t = 2``), close pairs in failing combinations go to branch and bound with the raised
threshold they need; what still fails is bounded jointly with the connected triples.

Every triple's box contains the boxes of its pairs and singles (the other features stay at
``x0``), so a proven level 3 also proves every change of fewer features.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from l0tre.certify.bab import branch_and_bound
from l0tre.certify.boxes import bound_margins, subset_boxes
from l0tre.certify.separable import SPLITS, SingleBounds, clean_margins, coordinates, refine_singles
from l0tre.certify.settings import CertifySettings
from l0tre.certify.target import Target

__all__ = [
    "TripleOutcome", "certify_triples_separable", "connected_triples", "decomposed_failures", "sampled_counterexample",
]

#: largest candidate set of single features whose triples are enumerated (``C(200, 3)`` ≈ 1.3M)
MAX_CANDIDATES = 200


def connected_triples(overlaps: Tensor) -> Tensor:
    """``(T, 3)`` triples ``i < j < k`` whose overlap graph is connected (at least two of
    their three pairs overlap), in increasing order; ``overlaps`` ``(n, n)`` bool."""
    n = overlaps.shape[0]
    dev = overlaps.device
    adj = overlaps & ~torch.eye(n, dtype=torch.bool, device=dev)
    parts = []
    for b in range(n):
        nb = adj[b].nonzero().flatten()
        if nb.numel() < 2:
            continue
        ac = torch.combinations(nb, 2)
        parts.append(torch.cat([ac, torch.full((ac.shape[0], 1), b, dtype=ac.dtype, device=dev)], 1))
    if not parts:
        return torch.zeros((0, 3), dtype=torch.int64, device=dev)
    tri = torch.cat(parts).sort(1).values
    key = torch.unique((tri[:, 0] * n + tri[:, 1]) * n + tri[:, 2])
    return torch.stack([key // (n * n), (key // n) % n, key % n], 1)


def decomposed_failures(
    d1: Tensor, d2: Tensor, pairs: Tensor, overlaps: Tensor, tau: Tensor, chunk: int = 1024,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The decomposed triples whose bound fails for some class.

    Args:
        d1: ``(n, K)`` single-feature bounds minus the clean margins (``+inf`` at the label).
        d2: ``(P, K)`` the same for the close pairs ``pairs`` ``(P, 2)``.
        overlaps: ``(n, n)`` bool (diagonal ``True``); tau: ``(K,)`` ``tol − m(x0)``.

    Returns:
        ``singles`` ``(F1, 3)`` failing triples of mutually separable features,
        ``combos`` ``(F2, 3)`` failing (close pair ``i, j``, single ``k``) triples, their pair
        rows ``(F2,)`` in ``pairs``, and ``None`` when the enumeration is complete — else the
        ``(R,)`` features of a candidate set too large to enumerate (``MAX_CANDIDATES``).
    """
    n, k_cls = d1.shape
    dev = d1.device
    sep = ~overlaps
    s_out, c_out, p_out = [], [], []
    too_many: Tensor | None = None
    for k in range(k_cls):
        if not math.isfinite(float(tau[k])):
            continue
        col = d1[:, k]
        low = col.topk(min(2, n), largest=False).values
        if low.numel() < 2 or not bool(torch.isfinite(low).all()):
            continue
        s1, s2 = float(low[0]), float(low[1])
        # (pair, single): the pair's d must leave room for the smallest single
        cand = (d2[:, k] <= float(tau[k]) - s1).nonzero().flatten()
        for s in range(0, cand.numel(), chunk):
            c = cand[s : s + chunk]
            p = pairs[c]
            bad = sep[p[:, 0]] & sep[p[:, 1]] & (col.unsqueeze(0) + d2[c, k].unsqueeze(1) <= float(tau[k]))
            r, single = bad.nonzero(as_tuple=True)
            c_out.append(torch.cat([p[r], single.unsqueeze(1)], 1))
            p_out.append(c[r])
        # three singles: every member of a failing triple is below tau - s1 - s2
        members = (col <= float(tau[k]) - s1 - s2).nonzero().flatten()
        if members.numel() > MAX_CANDIDATES:
            too_many = members if too_many is None else torch.unique(torch.cat([too_many, members]))
            continue
        if members.numel() >= 3:
            tri = torch.combinations(members, 3)
            ok = sep[tri[:, 0], tri[:, 1]] & sep[tri[:, 0], tri[:, 2]] & sep[tri[:, 1], tri[:, 2]]
            ok &= col[tri].sum(1) <= float(tau[k])
            s_out.append(tri[ok])
    empty = torch.zeros((0, 3), dtype=torch.int64, device=dev)
    singles = torch.unique(torch.cat(s_out).sort(1).values, dim=0) if s_out else empty
    combos = torch.cat(c_out) if c_out else empty
    rows = torch.cat(p_out) if p_out else torch.zeros(0, dtype=torch.int64, device=dev)
    if combos.numel():
        key = rows * n + combos[:, 2]
        key, first = _unique_first(key)
        combos, rows = combos[first], rows[first]
    return singles, combos, rows, too_many


def _unique_first(key: Tensor) -> tuple[Tensor, Tensor]:
    """Unique values of ``key`` ``(M,)`` and the index of one occurrence of each."""
    uniq, inv = torch.unique(key, return_inverse=True)
    first = torch.full((uniq.shape[0],), key.shape[0], dtype=torch.int64, device=key.device)
    first.scatter_reduce_(0, inv, torch.arange(key.shape[0], device=key.device), "amin")
    return uniq, first


def sampled_counterexample(
    target: Target, x0: Tensor, label: int, features: str, overlaps: Tensor, upper: Tensor, argpt: Tensor,
    m0: Tensor, top: int = 64,
) -> tuple[Tensor, tuple[int, ...]] | None:
    """A re-checked flip of at most three mutually separable features, from sampled
    single-feature margins ``upper`` ``(n, K)`` at the values ``argpt`` ``(n, K, C')``: per
    class, the features with the lowest sampled margins are combined greedily (each separable
    from those taken), which by additivity lowers the margin by the sum of their drops."""
    n, k_cls = upper.shape
    sep = ~overlaps
    cands: list[tuple[int, list[int]]] = []
    for k in range(k_cls):
        if k == label:
            continue
        drop = upper[:, k] - m0[k]
        order = drop.topk(min(top, n), largest=False).indices.tolist()
        taken: list[int] = []
        total = float(m0[k])
        for f in order:
            if len(taken) == 3:
                break
            if all(bool(sep[f, g]) for g in taken) and float(drop[f]) < 0:
                taken.append(f)
                total += float(drop[f])
        if taken and total < 0:
            cands.append((k, taken))
    if not cands:
        return None
    shape = (int(x0.shape[0]), int(x0.shape[1]), int(x0.shape[2]))
    xs = x0.unsqueeze(0).repeat(len(cands), 1, 1, 1)
    for row, (k, feats) in enumerate(cands):
        f = torch.tensor(feats, device=x0.device)
        ch, r, c = coordinates(shape, features, f)
        xs[row, ch, r.view(-1, 1), c.view(-1, 1)] = argpt[f, k]
    hit = (target.predict(xs) != label).nonzero().flatten()
    if hit.numel() == 0:
        return None
    i = int(hit[0])
    return xs[i], tuple(sorted(cands[i][1]))


@dataclass
class TripleOutcome:
    """Result of :func:`certify_triples_separable`.

    Attributes:
        remaining: ``(R, 3)`` triples to bound jointly: the decomposed ones whose bounds stay
            too loose and every connected triple (each sorted, no duplicates), the most
            promising for a counterexample first.
        proven: decomposed triples proven from single and pair bounds.
        boxes: boxes bounded here (single-feature sub-boxes, close pairs, branch-and-bound nodes).
        counterexample: a re-checked adversarial input ``(C, H, W)``, if one was found (its
            features: ``subset``).
        timed_out: the deadline passed first, or a candidate set stayed too large.
    """

    remaining: Tensor
    proven: int
    boxes: int
    counterexample: Tensor | None = None
    subset: tuple[int, ...] | None = None
    timed_out: bool = False


def certify_triples_separable(
    target: Target, x0: Tensor, label: int, overlaps: Tensor, settings: CertifySettings, *, features: str,
    deadline: float, splits: tuple[int, ...] = SPLITS,
) -> TripleOutcome:
    """Prove the decomposed ``3``-subsets of ``x0`` ``(C, H, W)`` (graph dtype and device) from
    single-feature and close-pair bounds (module docstring); ``overlaps`` from
    :func:`~l0tre.certify.separable.feature_overlaps`, ``deadline`` a ``time.perf_counter`` value.
    Close pairs go to branch and bound when ``settings.use_bab``."""
    run = _Triples(target, x0, label, overlaps, settings, features, deadline)
    out = run.singles_and_pairs()
    if out is not None:
        return out
    failures = run.refine(splits)
    if failures is None:
        return run.out_of_time()
    if failures[1].numel() and settings.use_bab:
        cex = run.close_pairs(failures[2])
        if cex is not None:
            return cex
        failures = decomposed_failures(run.d1(), run.d2(), run.pairs, overlaps, run.tau)
        if failures[3] is not None:
            return run.out_of_time()
    return run.remaining(failures[0], failures[1])


class _Triples:
    """The state of :func:`certify_triples_separable`: single-feature and close-pair bounds."""

    def __init__(self, target: Target, x0: Tensor, label: int, overlaps: Tensor, settings: CertifySettings,
                 features: str, deadline: float) -> None:
        self.target, self.x0, self.label, self.overlaps = target, x0, label, overlaps
        self.settings, self.features, self.deadline = settings, features, deadline
        self.lab = torch.tensor([label], device=target.graph.device)
        self.m0 = clean_margins(target, x0, label)
        self.tau = settings.margin_tol - self.m0
        self.tau[label] = math.inf
        self.n = overlaps.shape[0]
        self.singles = SingleBounds.empty(x0, self.n, self.m0.shape[0], features)
        self.tri = connected_triples(overlaps)
        self.pairs = torch.triu(overlaps, diagonal=1).nonzero()
        self.l2 = torch.empty((self.pairs.shape[0], self.m0.shape[0]), dtype=x0.dtype, device=x0.device)
        self.boxes = 0

    def d1(self) -> Tensor:
        return self.singles.lower - self.m0

    def d2(self) -> Tensor:
        return self.l2 - self.m0

    def out_of_time(self) -> TripleOutcome:
        return TripleOutcome(self.tri, 0, self.boxes, timed_out=True)

    def _refine(self, feats: Tensor, parts: int) -> bool:
        """Refine the single-feature bounds of ``feats``; whether it finished in time."""
        done = refine_singles(self.target, self.x0, self.lab, self.features, feats, parts, self.settings,
                              self.singles, self.deadline)
        self.boxes += done
        cf = self.x0.shape[0] if self.features == "pixel" else 1
        return done >= feats.numel() * parts**cf

    def singles_and_pairs(self) -> TripleOutcome | None:
        """Bound every single feature, then every close pair jointly; an outcome when that
        already decides (a sampled counterexample, or the deadline)."""
        if not self._refine(torch.arange(self.n, device=self.x0.device), 1):
            return self.out_of_time()
        cex = sampled_counterexample(self.target, self.x0, self.label, self.features, self.overlaps,
                                     self.singles.upper, self.singles.argpt, self.m0)
        if cex is not None:
            return TripleOutcome(self.tri.new_zeros((0, 3)), 0, self.boxes, cex[0], cex[1])
        for s in range(0, self.pairs.shape[0], 4096):
            if time.perf_counter() > self.deadline:
                return self.out_of_time()
            lo, hi = subset_boxes(self.x0, self.pairs[s : s + 4096], features=self.features,
                                  bounds=self.target.bounds)
            self.l2[s : s + 4096] = bound_margins(self.target, lo, hi, self.lab.expand(lo.shape[0]), self.settings)
            self.boxes += int(lo.shape[0])
        return None

    def refine(self, splits: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor | None] | None:
        """Refine the singles of failing combinations, split by split; the failures left
        (:func:`decomposed_failures`, complete), or ``None`` when out of time."""
        cf = self.x0.shape[0] if self.features == "pixel" else 1
        level = 0
        while True:
            failures = decomposed_failures(self.d1(), self.d2(), self.pairs, self.overlaps, self.tau)
            singles, combos, _, too_many = failures
            if too_many is None and singles.numel() == 0 and combos.numel() == 0:
                break
            level += 1
            if level >= len(splits):
                break
            extra = too_many if too_many is not None else singles.new_zeros(0)
            feats = torch.unique(torch.cat([singles.flatten(), combos[:, 2], extra]))
            if not self._refine(feats, max(1, round(splits[level] ** (1 / cf)))):
                return None
        return None if failures[3] is not None else failures

    def close_pairs(self, rows: Tensor) -> TripleOutcome | None:
        """Close pairs that need a higher bound than zero: branch and bound up to that
        threshold, per class the largest drop of a single feature (the label's column: +inf,
        clamped to 0). Raises ``l2``; an outcome when a pair flips the label (or time is up)."""
        need = self.settings.margin_tol - self.d1().min(0).values.clamp(max=0.0)
        p_rows = torch.unique(rows)
        lo, hi = subset_boxes(self.x0, self.pairs[p_rows], features=self.features, bounds=self.target.bounds)
        left = self.deadline - time.perf_counter()
        if left <= 0:
            return self.out_of_time()
        res = branch_and_bound(self.target, lo, hi, self.lab.expand(lo.shape[0]),
                               dataclasses.replace(self.settings, time_limit=left / 2), thresholds=need,
                               initial_margins=self.l2[p_rows])
        self.boxes += res.nodes
        if res.counterexamples:  # a real flip with two changed features
            i, x = next(iter(res.counterexamples.items()))
            return TripleOutcome(self.tri.new_zeros((0, 3)), 0, self.boxes, x.to(self.x0.device),
                                 tuple(int(v) for v in self.pairs[p_rows[i]].tolist()))
        self.l2[p_rows] = torch.maximum(self.l2[p_rows], res.margin_lb.to(device=self.l2.device, dtype=self.l2.dtype))
        return None

    def remaining(self, singles: Tensor, combos: Tensor) -> TripleOutcome:
        """The outcome: every failing decomposed triple and every connected triple, the most
        promising for a counterexample first (then it stops the level early): by the margin
        the sampled single-feature minima would give if the triple were additive."""
        failing = torch.unique(torch.cat([singles, combos.sort(1).values]), dim=0)
        total = math.comb(self.n, 3) - self.tri.shape[0]
        remaining = torch.cat([failing, self.tri])
        drop = (self.singles.upper - self.m0).clamp(max=0.0).nan_to_num(posinf=0.0)  # (n, K), 0 at the label
        estimate = (self.m0 + drop[remaining].sum(1)).masked_fill(torch.isinf(self.tau), math.inf).min(1).values
        order = torch.argsort(estimate, stable=True)
        return TripleOutcome(remaining[order], total - int(failing.shape[0]), self.boxes)
