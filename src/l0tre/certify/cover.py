"""Certify a whole L0 level by covering its ``t``-subsets with larger boxes.

A box that frees ``k ≥ t`` features and is proven safe proves every ``t``-subset of those
features (each ``t``-subset's box is contained in it). The features are partitioned into
spatially compact *regions* (rectangles of pixels, all channels; with ``features="element"``
a region may also be split along channels). A *block* is the union of ``t`` distinct regions;
the blocks over all ``t``-combinations of regions cover every ``t``-subset, because a
``t``-subset meets at most ``t`` regions. A block that fails is refined: each of its regions
is halved and the children are the ``t``-combinations of the halves, which again cover every
``t``-subset of the parent. A block of ``t`` single features is one ``t``-subset: it goes to
branch and bound.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from l0tre.certify.bab import certify_boxes_bab, prove_by_halving
from l0tre.certify.bounds import LEVEL_METHODS, BoundOptions, auto_method
from l0tre.certify.boxes import as_labels, bound_margins, feature_count, subset_boxes
from l0tre.certify.falsify import search_counterexamples
from l0tre.certify.separable import PairOutcome, certify_pairs_separable, feature_overlaps
from l0tre.certify.target import Target, resolve
from l0tre.certify.triples import TripleOutcome, certify_triples_separable
from l0tre.certify.types import LevelResult, Status
from l0tre.classifier import ieee_float32

__all__ = [
    "Region",
    "certify_level",
    "covering_blocks",
    "initial_regions",
    "refine_block",
    "region_features",
]

#: share of all feature pairs that must be separable for the separable routes (``t = 2, 3``)
MIN_SEPARABLE_SHARE = 0.25

Region = tuple[int, int, int, int, int, int]  # (c0, c1, h0, h1, w0, w1), half-open ranges
Block = tuple[Region, ...]


def region_features(r: Region, shape: tuple[int, int, int], features: str) -> list[int]:
    """Feature indices of a region (pixels ``h*W + w`` or elements ``c*H*W + h*W + w``)."""
    _, hh, ww = shape
    c0, c1, h0, h1, w0, w1 = r
    pix = [h * ww + w for h in range(h0, h1) for w in range(w0, w1)]
    if features == "pixel":
        return pix
    return [c * hh * ww + p for c in range(c0, c1) for p in pix]


def _split(r: Region, features: str) -> tuple[Region, Region] | None:
    c0, c1, h0, h1, w0, w1 = r
    if (h1 - h0) * (w1 - w0) > 1:
        if h1 - h0 >= w1 - w0:
            m = (h0 + h1) // 2
            return (c0, c1, h0, m, w0, w1), (c0, c1, m, h1, w0, w1)
        m = (w0 + w1) // 2
        return (c0, c1, h0, h1, w0, m), (c0, c1, h0, h1, m, w1)
    if features == "element" and c1 - c0 > 1:
        m = (c0 + c1) // 2
        return (c0, m, h0, h1, w0, w1), (m, c1, h0, h1, w0, w1)
    return None


def initial_regions(shape: tuple[int, int, int], features: str, block: int) -> list[Region]:
    """Tile the image with ``block × block`` pixel patches (all channels)."""
    c, h, w = shape
    if block < 1:
        raise ValueError(f"block: expected a positive patch side, got {block}")
    return [(0, c, i, min(i + block, h), j, min(j + block, w))
            for i in range(0, h, block) for j in range(0, w, block)]


def covering_blocks(regions: list[Region], t: int) -> list[Block]:
    """All unions of ``t`` distinct regions (one block of everything if fewer regions)."""
    if t < 1:
        raise ValueError(f"t: expected a positive level, got {t}")
    if len(regions) <= t:
        return [tuple(regions)]
    return list(itertools.combinations(regions, t))


def refine_block(block: Block, t: int, features: str) -> list[Block]:
    """Children covering every ``t``-subset of ``block``; ``[]`` when it is a single subset."""
    parts: list[Region] = []
    for r in block:
        s = _split(r, features)
        parts.extend(s if s is not None else (r,))
    if len(parts) == len(block):
        return []
    return covering_blocks(parts, t)


def _block_features(block: Block, shape: tuple[int, int, int], features: str) -> list[int]:
    return sorted(f for r in block for f in region_features(r, shape, features))


def _subsets_tensor(blocks: list[list[int]], device: torch.device) -> Tensor:
    k = max(len(b) for b in blocks)
    out = torch.full((len(blocks), k), -1, dtype=torch.int64)
    for i, b in enumerate(blocks):
        out[i, : len(b)] = torch.tensor(b, dtype=torch.int64)
    return out.to(device)


def _single_features(block: Block, t: int, features: str) -> list[Block]:
    """All single ``t``-subsets of a block, as blocks of ``t`` single-feature regions."""
    leaves: list[Region] = []
    stack = list(block)
    while stack:
        r = stack.pop()
        s = _split(r, features)
        if s is None:
            leaves.append(r)
        else:
            stack.extend(s)
    return covering_blocks(sorted(leaves), t)


@dataclass
class _Run:
    """Settings and counters of one :func:`certify_level` call."""

    target: Target
    x0: Tensor
    lab: Tensor
    t: int
    features: str
    opts: BoundOptions
    batch_size: int
    margin_tol: float
    start: float
    time_limit: float
    singles: list[list[int]] = field(default_factory=list)
    single_margins: list[Tensor] = field(default_factory=list)
    tried: int = 0
    proven: int = 0
    sizes: dict[int, int] = field(default_factory=dict)
    separable: int = 0
    checked: int = 0  # t-subsets sent to branch and bound in earlier waves
    nodes: int = 0  # branch-and-bound nodes of earlier waves

    def result(self, status: Status, nodes: int = 0, cex: Tensor | None = None,
               subset: tuple[int, ...] | None = None) -> LevelResult:
        sep2, sep3 = (self.separable, 0) if self.t == 2 else (0, self.separable)
        return LevelResult(self.t, status, self.tried, self.proven, self.checked + len(self.singles),
                           self.nodes + nodes, time.perf_counter() - self.start,
                           None if cex is None else cex.cpu(), subset, dict(self.sizes), sep2, sep3)

    def bound(self, feats: list[list[int]]) -> Tensor:
        lo, hi = subset_boxes(self.x0, _subsets_tensor(feats, self.x0.device),
                              features=self.features, bounds=self.target.bounds)
        self.tried += len(feats)
        return bound_margins(self.target, lo, hi, self.lab.expand(len(feats)), self.opts,
                             self.batch_size)


@ieee_float32()
def certify_level(
    model: Any,
    x0: Tensor,
    label: int,
    t: int,
    *,
    features: str = "pixel",
    bounds: tuple[float, float] | None = None,
    preprocessing: Any = None,
    method: str = "hybrid",
    intermediate: str = "auto",
    block: int | None = None,
    jump: float = 2.0,
    use_bab: bool = True,
    bab_max_depth: int = 12,
    bab_max_nodes: int = 20_000,
    max_boxes: int = 200_000,
    time_limit: float = 300.0,
    batch_size: int = 256,
    max_memory: int = 1 << 30,
    dtype: torch.dtype = torch.float64,
    margin_tol: float = 1e-6,
    separable: bool = True,
    overlaps: Tensor | None = None,
) -> LevelResult:
    """Decide whether no change of at most ``t`` features flips ``x0``'s label.

    Args:
        model, x0, label, features, bounds, preprocessing, method, intermediate, batch_size,
            max_memory, dtype, margin_tol: as in :func:`l0tre.certify.certify_subsets`
            (``method`` defaults to ``"hybrid"`` here; ``"auto"`` picks per model, see
            :func:`l0tre.certify.bounds.auto_method`).
        t: the level (features changed at once), ``≥ 1``.
        block: side of the initial pixel patches (default 2 for ``t ≤ 2``, else 1).
        jump: a failed block whose worst margin bound is below ``-jump`` times the clean
            margin of ``x0`` is refined straight to its single ``t``-subsets (halving it is
            unlikely to help); ``0`` disables this.
        use_bab: run branch and bound on the single ``t``-subsets no block proves (else they
            are only searched for counterexamples).
        bab_max_depth, bab_max_nodes: branch-and-bound budgets.
        max_boxes: budget of covering boxes; ``time_limit``: seconds overall.
        separable: at ``t = 2``, prove the pairs of features that no nonlinear operation mixes
            from single-feature bounds (:mod:`l0tre.certify.separable`) when at least
            ``MIN_SEPARABLE_SHARE`` of all pairs are such; the other pairs are bounded one by
            one, then branch and bound. At ``t = 3`` the same for triples that split into
            separable components (:mod:`l0tre.certify.triples`); the connected triples are
            bounded one by one. Otherwise (or with ``False``) the box covering.
        overlaps: ``(n, n)`` from :func:`l0tre.certify.separable.feature_overlaps` for this
            model, input shape and ``features`` (computed when ``None``; pass it to reuse it
            across inputs).

    Returns:
        :class:`LevelResult` (``certified`` is ``status is PROVEN``).
    """
    start = time.perf_counter()
    if x0.dim() != 3:
        raise ValueError(f"x0: expected a (C, H, W) image, got shape {tuple(x0.shape)}")
    if not isinstance(t, int) or t < 1:
        raise ValueError(f"t: expected a positive integer, got {t!r}")
    shape = (int(x0.shape[0]), int(x0.shape[1]), int(x0.shape[2]))
    feature_count(shape, features)  # validates ``features``
    target = resolve(model, shape, preprocessing=preprocessing, bounds=bounds, dtype=dtype)
    dev = target.graph.device
    x0 = x0.to(device=dev, dtype=target.graph.dtype)
    lab = as_labels(label, 1, dev)
    if method not in LEVEL_METHODS:
        raise ValueError(f"method: expected one of {LEVEL_METHODS}, got {method!r}")
    if method == "auto":
        method = auto_method(target.graph)
    opts = BoundOptions(method=method, intermediate=intermediate, max_memory=max_memory)
    run = _Run(target, x0, lab, t, features, opts, batch_size, margin_tol, start, time_limit)
    with torch.no_grad():
        clean = target.margins(x0.unsqueeze(0), lab)
    clean[0, int(label)] = float("inf")
    if int(target.predict(x0.unsqueeze(0))[0]) != int(label):
        return run.result(Status.FALSIFIED, cex=x0, subset=())
    m0 = float(clean.min())
    if t in (2, 3) and separable:
        ov = overlaps if overlaps is not None else feature_overlaps(target, features, max_memory)
        n = ov.shape[0] if ov is not None else 0
        if ov is not None and n > t and int((~ov).sum()) >= MIN_SEPARABLE_SHARE * n * (n - 1):
            if t == 2:
                return _level2_separable(run, ov, use_bab, bab_max_depth, bab_max_nodes, max_memory, method,
                                         intermediate)
            return _level3_separable(run, ov, use_bab, bab_max_depth, bab_max_nodes, max_memory, method,
                                     intermediate)
    side = block if block is not None else (2 if t <= 2 else 1)
    pending: deque[Block] = deque(covering_blocks(initial_regions(shape, features, side), t))
    seen: set[Block] = set(pending)
    wave = max(1, batch_size)
    while pending:
        if run.tried >= max_boxes or time.perf_counter() - start > time_limit:
            return run.result(Status.UNKNOWN)
        todo = [pending.popleft() for _ in range(min(wave, len(pending)))]
        feats = [_block_features(b, shape, features) for b in todo]
        margin = run.bound(feats)
        worst = margin.min(1).values.tolist()
        for blk, f, m, lb in zip(todo, feats, worst, margin, strict=True):
            if m > margin_tol:
                run.proven += 1
                run.sizes[len(f)] = run.sizes.get(len(f), 0) + 1
                continue
            if jump > 0 and m < -jump * m0:
                children = _single_features(blk, t, features)
                if len(children) == 1 and _block_features(children[0], shape, features) == f:
                    children = []
            else:
                children = refine_block(blk, t, features)
            if not children:
                run.singles.append(f)
                run.single_margins.append(lb)
            for c in children:
                if c not in seen:
                    seen.add(c)
                    pending.append(c)
    return _finish_singles(run, use_bab, bab_max_depth, bab_max_nodes, max_memory, method,
                           intermediate)


def _settle(run: _Run, out: PairOutcome | TripleOutcome) -> LevelResult | None:
    """Count a separable route's work; its result when it already decided the level."""
    run.tried += out.boxes
    run.separable = out.proven
    if out.counterexample is not None:
        return run.result(Status.FALSIFIED, cex=out.counterexample, subset=out.subset)
    if out.timed_out:
        return run.result(Status.UNKNOWN)
    return None


def _level2_separable(run: _Run, overlaps: Tensor, use_bab: bool, max_depth: int, max_nodes: int,
                      max_memory: int, method: str, intermediate: str) -> LevelResult:
    """``t = 2``: separable pairs from single-feature bounds, every other pair bounded on its
    own, then branch and bound on those that stay open."""
    out = certify_pairs_separable(
        run.target, run.x0, int(run.lab[0]), overlaps.to(run.x0.device), features=run.features, opts=run.opts,
        batch_size=run.batch_size, margin_tol=run.margin_tol, deadline=run.start + run.time_limit,
    )
    settled = _settle(run, out)
    if settled is not None:
        return settled
    pairs = out.remaining.tolist()
    wave = max(1, 16 * run.batch_size)
    for s in range(0, len(pairs), wave):
        if time.perf_counter() - run.start > run.time_limit:
            return run.result(Status.UNKNOWN)
        feats = pairs[s : s + wave]
        margin = run.bound(feats)
        ok = margin.min(1).values > run.margin_tol
        run.proven += int(ok.sum())
        run.sizes[2] = run.sizes.get(2, 0) + int(ok.sum())
        for i in (~ok).nonzero().flatten().tolist():
            run.singles.append(feats[i])
            run.single_margins.append(margin[i])
    return _finish_singles(run, use_bab, max_depth, max_nodes, max_memory, method, intermediate)


def _level3_separable(run: _Run, overlaps: Tensor, use_bab: bool, max_depth: int, max_nodes: int,
                      max_memory: int, method: str, intermediate: str) -> LevelResult:
    """``t = 3``: decomposed triples from single and pair bounds, every other triple bounded
    on its own; branch and bound after each wave, so that a counterexample stops the level early."""
    out = certify_triples_separable(
        run.target, run.x0, int(run.lab[0]), overlaps.to(run.x0.device), features=run.features, opts=run.opts,
        batch_size=run.batch_size, margin_tol=run.margin_tol, deadline=run.start + run.time_limit,
        use_bab=use_bab, bab_max_depth=max_depth, bab_max_nodes=max_nodes,
    )
    settled = _settle(run, out)
    if settled is not None:
        return settled
    triples = out.remaining
    wave, s = max(1, run.batch_size), 0
    while s < triples.shape[0]:
        if time.perf_counter() - run.start > run.time_limit:
            return run.result(Status.UNKNOWN)
        feats = triples[s : s + wave].tolist()
        s, wave = s + wave, min(4 * wave, 16 * run.batch_size)  # small first waves: fail fast
        margin = run.bound(feats)
        ok = margin.min(1).values > run.margin_tol
        run.proven += int(ok.sum())
        run.sizes[3] = run.sizes.get(3, 0) + int(ok.sum())
        fail = (~ok).nonzero().flatten()
        if fail.numel():  # halve the few free coordinates of the rest before branch and bound
            lo, hi = subset_boxes(run.x0, _subsets_tensor([feats[i] for i in fail.tolist()], run.x0.device),
                                  features=run.features, bounds=run.target.bounds)
            halved, pieces = prove_by_halving(run.target, lo, hi, run.lab.expand(lo.shape[0]), run.opts,
                                      batch_size=run.batch_size, margin_tol=run.margin_tol,
                                      deadline=run.start + run.time_limit)
            run.tried += pieces
            ok[fail[halved]] = True
            run.sizes[3] += int(halved.sum())
        for i in (~ok).nonzero().flatten().tolist():
            run.singles.append(feats[i])
            run.single_margins.append(margin[i])
        if run.singles:
            res = _finish_singles(run, use_bab, max_depth, max_nodes, max_memory, method, intermediate)
            if res.status is not Status.PROVEN:
                return res
            run.checked += len(run.singles)
            run.nodes = res.bab_nodes
            run.singles, run.single_margins = [], []
    return run.result(Status.PROVEN)


def _finish_singles(run: _Run, use_bab: bool, max_depth: int, max_nodes: int,
                    max_memory: int, method: str, intermediate: str) -> LevelResult:
    """Branch and bound (or a counterexample search) on the single ``t``-subsets."""
    if not run.singles:
        return run.result(Status.PROVEN)
    target, x0 = run.target, run.x0
    subsets = _subsets_tensor(run.singles, x0.device)
    lo, hi = subset_boxes(x0, subsets, features=run.features, bounds=target.bounds)
    labels = run.lab.expand(len(run.singles))
    if not use_bab:
        found, x = search_counterexamples(target, lo, hi, labels)
        if bool(found.any()):
            i = int(torch.nonzero(found)[0])
            return run.result(Status.FALSIFIED, 0, x[i], tuple(run.singles[i]))
        return run.result(Status.UNKNOWN)
    remaining = run.time_limit - (time.perf_counter() - run.start)
    if remaining <= 0:
        return run.result(Status.UNKNOWN)
    res = certify_boxes_bab(target, lo, hi, labels, method=method, intermediate=intermediate,
                            max_depth=max_depth, max_nodes=max_nodes, time_limit=remaining,
                            batch_size=run.batch_size, max_memory=max_memory,
                            margin_tol=run.margin_tol,
                            initial_margins=torch.stack(run.single_margins))
    for i, s in enumerate(res.status):
        if s is Status.FALSIFIED:
            return run.result(Status.FALSIFIED, res.nodes, res.counterexamples[i],
                              tuple(run.singles[i]))
    if all(s is Status.PROVEN for s in res.status):
        return run.result(Status.PROVEN, res.nodes)
    return run.result(Status.UNKNOWN, res.nodes)
