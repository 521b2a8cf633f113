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

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from l0tre.certify.bab import certify_boxes_bab
from l0tre.certify.bounds import BoundOptions
from l0tre.certify.boxes import bound_margins, subset_boxes
from l0tre.certify.separable import SPLITS, coordinates, refine_singles
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
    target: Target,
    x0: Tensor,
    label: int,
    overlaps: Tensor,
    *,
    features: str,
    opts: BoundOptions,
    batch_size: int,
    margin_tol: float,
    deadline: float,
    use_bab: bool = True,
    bab_max_depth: int = 12,
    bab_max_nodes: int = 20_000,
    splits: tuple[int, ...] = SPLITS,
) -> TripleOutcome:
    """Prove the decomposed ``3``-subsets of ``x0`` ``(C, H, W)`` (graph dtype and device) from
    single-feature and close-pair bounds (module docstring); ``overlaps`` from
    :func:`~l0tre.certify.separable.feature_overlaps`, ``deadline`` a ``time.perf_counter`` value."""
    graph = target.graph
    dev = graph.device
    n = overlaps.shape[0]
    lab = torch.tensor([label], device=dev)
    with torch.no_grad():
        z0 = graph.forward(x0.unsqueeze(0))[0]
    m0 = z0[label] - z0
    tau = margin_tol - m0
    tau[label] = math.inf
    k_cls = m0.shape[0]
    cf = x0.shape[0] if features == "pixel" else 1
    lower = torch.full((n, k_cls), -math.inf, dtype=graph.dtype, device=dev)
    upper = torch.full((n, k_cls), math.inf, dtype=graph.dtype, device=dev)
    argpt = torch.zeros((n, k_cls, cf), dtype=graph.dtype, device=dev)
    tri = connected_triples(overlaps)
    pairs = torch.triu(overlaps, diagonal=1).nonzero()
    boxes = 0

    def out_of_time() -> TripleOutcome:
        return TripleOutcome(tri, 0, boxes, timed_out=True)

    # singles, then every close pair bounded jointly
    todo = torch.arange(n, device=dev)
    done = refine_singles(target, x0, lab, features, todo, 1, opts, batch_size, lower, upper, argpt, deadline)
    boxes += done
    if done < n:
        return out_of_time()
    cex = sampled_counterexample(target, x0, label, features, overlaps, upper, argpt, m0)
    if cex is not None:
        return TripleOutcome(tri.new_zeros((0, 3)), 0, boxes, cex[0], cex[1])
    l2 = torch.empty((pairs.shape[0], k_cls), dtype=graph.dtype, device=dev)
    for s in range(0, pairs.shape[0], 4096):
        if time.perf_counter() > deadline:
            return out_of_time()
        lo, hi = subset_boxes(x0, pairs[s : s + 4096], features=features, bounds=target.bounds)
        l2[s : s + 4096] = bound_margins(target, lo, hi, lab.expand(lo.shape[0]), opts, batch_size)
        boxes += int(lo.shape[0])

    level = 0
    while True:
        singles, combos, rows, too_many = decomposed_failures(lower - m0, l2 - m0, pairs, overlaps, tau)
        if too_many is None and singles.numel() == 0 and combos.numel() == 0:
            break
        level += 1
        if level >= len(splits):
            break
        refine = torch.unique(torch.cat([singles.flatten(), combos[:, 2],
                                         too_many if too_many is not None else singles.new_zeros(0)]))
        parts = max(1, round(splits[level] ** (1 / cf)))
        done = refine_singles(target, x0, lab, features, refine, parts, opts, batch_size, lower, upper, argpt,
                              deadline)
        boxes += done
        if done < refine.numel() * parts**cf:
            return out_of_time()
    if too_many is not None:
        return out_of_time()

    if combos.numel() and use_bab:
        # close pairs that need a higher bound than zero: branch and bound up to that threshold,
        # per class the largest drop of a single feature (the label's column: +inf, clamped to 0)
        need = margin_tol - (lower - m0).min(0).values.clamp(max=0.0)
        p_rows = torch.unique(rows)
        lo, hi = subset_boxes(x0, pairs[p_rows], features=features, bounds=target.bounds)
        left = deadline - time.perf_counter()
        if left <= 0:
            return out_of_time()
        res = certify_boxes_bab(target, lo, hi, lab.expand(lo.shape[0]), method=opts.method,
                                intermediate=opts.intermediate, max_depth=bab_max_depth, max_nodes=bab_max_nodes,
                                time_limit=left / 2, batch_size=batch_size, max_memory=opts.max_memory,
                                margin_tol=need, initial_margins=l2[p_rows])
        boxes += res.nodes
        if res.counterexamples:  # a real flip with two changed features
            i, x = next(iter(res.counterexamples.items()))
            return TripleOutcome(tri.new_zeros((0, 3)), 0, boxes, x.to(dev),
                                 tuple(int(v) for v in pairs[p_rows[i]].tolist()))
        l2[p_rows] = torch.maximum(l2[p_rows], res.margin_lb.to(device=dev, dtype=l2.dtype))
        singles, combos, rows, too_many = decomposed_failures(lower - m0, l2 - m0, pairs, overlaps, tau)
        if too_many is not None:
            return out_of_time()

    failing = torch.unique(torch.cat([singles, combos.sort(1).values]), dim=0)
    total = math.comb(n, 3) - tri.shape[0]
    remaining = torch.cat([failing, tri])
    # most promising first (a counterexample then stops the level early): by the margin the
    # sampled single-feature minima would give if the triple were additive
    drop = (upper - m0).clamp(max=0.0).nan_to_num(posinf=0.0)  # (n, K), 0 at the label
    estimate = (m0 + drop[remaining].sum(1)).masked_fill(torch.isinf(tau), math.inf).min(1).values
    order = torch.argsort(estimate, stable=True)
    return TripleOutcome(remaining[order], total - int(failing.shape[0]), boxes)
