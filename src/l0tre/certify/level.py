"""Certify a whole L0 level: is every change of at most ``t`` features of an input safe?

:func:`certify_level` tries, in this order:

* at ``t = 2`` and ``t = 3``, when enough feature pairs are separable (no nonlinear operation
  mixes them), the separable routes: pairs from single-feature bounds
  (:mod:`l0tre.certify.separable`), triples from single-feature and pair bounds
  (:mod:`l0tre.certify.triples`); the rest is bounded subset by subset;
* otherwise the box covering of :mod:`l0tre.certify.cover`: blocks that free ``k ≥ t``
  features, refined where they fail.

The single ``t``-subsets nothing proves go to branch and bound (:mod:`l0tre.certify.bab`),
which either proves them or finds a counterexample, re-checked on the model.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from l0tre.certify.bab import branch_and_bound, prove_by_halving
from l0tre.certify.boxes import as_labels, bound_margins, feature_count, subset_boxes
from l0tre.certify.cover import (
    Block,
    block_features,
    covering_blocks,
    initial_regions,
    refine_block,
    single_subsets,
    subsets_tensor,
)
from l0tre.certify.falsify import search_counterexamples
from l0tre.certify.methods import Method
from l0tre.certify.separable import PairOutcome, certify_pairs_separable, feature_overlaps
from l0tre.certify.settings import LEVEL_SETTINGS, CertifySettings
from l0tre.certify.target import Target, resolve
from l0tre.certify.triples import TripleOutcome, certify_triples_separable
from l0tre.certify.types import LevelResult, Status
from l0tre.classifier import ieee_float32

__all__ = ["MIN_SEPARABLE_SHARE", "certify_level"]

#: share of all feature pairs that must be separable for the separable routes (``t = 2, 3``)
MIN_SEPARABLE_SHARE = 0.25


@dataclass
class _Run:
    """Inputs, settings and counters of one :func:`certify_level` call."""

    target: Target
    x0: Tensor
    lab: Tensor
    t: int
    features: str
    settings: CertifySettings
    start: float
    singles: list[list[int]] = field(default_factory=list)  # t-subsets left for branch and bound
    single_margins: list[Tensor] = field(default_factory=list)
    tried: int = 0
    proven: int = 0
    sizes: dict[int, int] = field(default_factory=dict)
    separable: int = 0
    checked: int = 0  # t-subsets sent to branch and bound in earlier waves
    nodes: int = 0  # branch-and-bound nodes of earlier waves

    @property
    def deadline(self) -> float:
        return self.start + self.settings.time_limit

    def expired(self) -> bool:
        return time.perf_counter() - self.start > self.settings.time_limit

    def result(self, status: Status, nodes: int = 0, cex: Tensor | None = None,
               subset: tuple[int, ...] | None = None) -> LevelResult:
        sep2, sep3 = (self.separable, 0) if self.t == 2 else (0, self.separable)
        return LevelResult(self.t, status, self.tried, self.proven, self.checked + len(self.singles),
                           self.nodes + nodes, time.perf_counter() - self.start,
                           None if cex is None else cex.cpu(), subset, dict(self.sizes), sep2, sep3)

    def boxes(self, feats: list[list[int]]) -> tuple[Tensor, Tensor]:
        return subset_boxes(self.x0, subsets_tensor(feats, self.x0.device), features=self.features,
                            bounds=self.target.bounds)

    def bound(self, feats: list[list[int]]) -> Tensor:
        lo, hi = self.boxes(feats)
        self.tried += len(feats)
        return bound_margins(self.target, lo, hi, self.lab.expand(len(feats)), self.settings)

    def count_proven(self, size: int, count: int) -> None:
        self.proven += count
        self.sizes[size] = self.sizes.get(size, 0) + count

    def keep_failed(self, feats: list[list[int]], margin: Tensor, ok: Tensor) -> None:
        """Hand the subsets not ``ok`` on to branch and bound, with their margin bounds."""
        for i in (~ok).nonzero().flatten().tolist():
            self.singles.append(feats[i])
            self.single_margins.append(margin[i])


@ieee_float32()
def certify_level(model: Any, x0: Tensor, label: int, t: int, *, features: str = "pixel",
                  bounds: tuple[float, float] | None = None, preprocessing: Any = None,
                  settings: CertifySettings | None = None, overlaps: Tensor | None = None,
                  **options: Any) -> LevelResult:
    """Decide whether no change of at most ``t`` features flips ``x0``'s label.

    Args:
        model, x0, label, features, bounds, preprocessing: as in
            :func:`l0tre.certify.certify_subsets`.
        t: the level (features changed at once), ``≥ 1``.
        settings: :class:`~l0tre.certify.settings.CertifySettings`, by default
            :data:`~l0tre.certify.settings.LEVEL_SETTINGS` (``method="hybrid"``,
            ``time_limit=300``, ``max_depth=12``; ``method="auto"`` picks per model, see
            :func:`l0tre.certify.methods.auto_method`); every field applies here, the level
            covering ones (``block``, ``jump``, ``max_boxes``, ``separable``) only here.
            ``options``: any of its fields, applied on top.
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
    settings = CertifySettings.build(settings if settings is not None else LEVEL_SETTINGS, **options)
    shape = (int(x0.shape[0]), int(x0.shape[1]), int(x0.shape[2]))
    feature_count(shape, features)  # validates ``features``
    target = resolve(model, shape, preprocessing=preprocessing, bounds=bounds, dtype=settings.dtype)
    settings = dataclasses.replace(settings, method=Method.parse(settings.method_for(target.graph)))
    x0 = x0.to(device=target.graph.device, dtype=target.graph.dtype)
    run = _Run(target, x0, as_labels(label, 1, target.graph.device), t, features, settings, start)
    with torch.no_grad():
        clean = target.margins(x0.unsqueeze(0), run.lab)
    clean[0, int(label)] = float("inf")
    if int(target.predict(x0.unsqueeze(0))[0]) != int(label):
        return run.result(Status.FALSIFIED, cex=x0, subset=())
    if t in (2, 3) and settings.separable:
        routed = _separable_route(run, overlaps)
        if routed is not None:
            return routed
    return _cover(run, shape, float(clean.min()))


def _separable_route(run: _Run, overlaps: Tensor | None) -> LevelResult | None:
    """The level by the separable route (``t = 2, 3``) when enough pairs are separable."""
    ov = overlaps if overlaps is not None else feature_overlaps(run.target, run.features, run.settings.max_memory)
    n = ov.shape[0] if ov is not None else 0
    if ov is None or n <= run.t or int((~ov).sum()) < MIN_SEPARABLE_SHARE * n * (n - 1):
        return None
    ov = ov.to(run.x0.device)
    return _level2_separable(run, ov) if run.t == 2 else _level3_separable(run, ov)


def _cover(run: _Run, shape: tuple[int, int, int], m0: float) -> LevelResult:
    """The box covering: bound blocks wave by wave, refine the failed ones; ``m0`` is the
    clean margin of ``x0``."""
    s = run.settings
    side = s.block if s.block is not None else (2 if run.t <= 2 else 1)
    pending: deque[Block] = deque(covering_blocks(initial_regions(shape, run.features, side), run.t))
    seen: set[Block] = set(pending)
    wave = max(1, s.batch_size)
    while pending:
        if run.tried >= s.max_boxes or run.expired():
            return run.result(Status.UNKNOWN)
        todo = [pending.popleft() for _ in range(min(wave, len(pending)))]
        feats = [block_features(b, shape, run.features) for b in todo]
        margin = run.bound(feats)
        worst = margin.min(1).values.tolist()
        for blk, f, m, lb in zip(todo, feats, worst, margin, strict=True):
            if m > s.margin_tol:
                run.count_proven(len(f), 1)
                continue
            children = _children(run, blk, f, m < -s.jump * m0 if s.jump > 0 else False, shape)
            if not children:
                run.singles.append(f)
                run.single_margins.append(lb)
            for c in children:
                if c not in seen:
                    seen.add(c)
                    pending.append(c)
    return _finish_singles(run)


def _children(run: _Run, blk: Block, feats: list[int], jump: bool, shape: tuple[int, int, int]) -> list[Block]:
    """The refinement of a failed block: halved regions, or with ``jump`` (its bound is far
    below zero: halving is unlikely to help) its single ``t``-subsets; ``[]`` when the block
    is a single subset."""
    if not jump:
        return refine_block(blk, run.t, run.features)
    children = single_subsets(blk, run.t, run.features)
    if len(children) == 1 and block_features(children[0], shape, run.features) == feats:
        return []
    return children


def _settle(run: _Run, out: PairOutcome | TripleOutcome) -> LevelResult | None:
    """Count a separable route's work; its result when it already decided the level."""
    run.tried += out.boxes
    run.separable = out.proven
    if out.counterexample is not None:
        return run.result(Status.FALSIFIED, cex=out.counterexample, subset=out.subset)
    if out.timed_out:
        return run.result(Status.UNKNOWN)
    return None


def _level2_separable(run: _Run, overlaps: Tensor) -> LevelResult:
    """``t = 2``: separable pairs from single-feature bounds, every other pair bounded on its
    own, then branch and bound on those that stay open."""
    out = certify_pairs_separable(run.target, run.x0, int(run.lab[0]), overlaps, run.settings,
                                  features=run.features, deadline=run.deadline)
    settled = _settle(run, out)
    if settled is not None:
        return settled
    pairs = out.remaining.tolist()
    wave = max(1, 16 * run.settings.batch_size)
    for s in range(0, len(pairs), wave):
        if run.expired():
            return run.result(Status.UNKNOWN)
        feats = pairs[s : s + wave]
        margin = run.bound(feats)
        ok = margin.min(1).values > run.settings.margin_tol
        run.count_proven(2, int(ok.sum()))
        run.keep_failed(feats, margin, ok)
    return _finish_singles(run)


def _level3_separable(run: _Run, overlaps: Tensor) -> LevelResult:
    """``t = 3``: decomposed triples from single and pair bounds, every other triple bounded
    on its own; branch and bound after each wave, so that a counterexample stops the level early."""
    out = certify_triples_separable(run.target, run.x0, int(run.lab[0]), overlaps, run.settings,
                                    features=run.features, deadline=run.deadline)
    settled = _settle(run, out)
    if settled is not None:
        return settled
    triples = out.remaining
    batch = run.settings.batch_size
    wave, s = max(1, batch), 0
    while s < triples.shape[0]:
        if run.expired():
            return run.result(Status.UNKNOWN)
        feats = triples[s : s + wave].tolist()
        s, wave = s + wave, min(4 * wave, 16 * batch)  # small first waves: fail fast
        decided = _triples_wave(run, feats)
        if decided is not None:
            return decided
    return run.result(Status.PROVEN)


def _triples_wave(run: _Run, feats: list[list[int]]) -> LevelResult | None:
    """Bound one wave of triples jointly, halve the free coordinates of those that fail, and
    run branch and bound on the rest; the level's result when that decides it."""
    margin = run.bound(feats)
    ok = margin.min(1).values > run.settings.margin_tol
    run.count_proven(3, int(ok.sum()))
    fail = (~ok).nonzero().flatten()
    if fail.numel():  # halve the few free coordinates of the rest before branch and bound
        lo, hi = run.boxes([feats[i] for i in fail.tolist()])
        halved, pieces = prove_by_halving(run.target, lo, hi, run.lab.expand(lo.shape[0]), run.settings,
                                          deadline=run.deadline)
        run.tried += pieces
        ok[fail[halved]] = True
        run.sizes[3] += int(halved.sum())
    run.keep_failed(feats, margin, ok)
    if not run.singles:
        return None
    res = _finish_singles(run)
    if res.status is not Status.PROVEN:
        return res
    run.checked += len(run.singles)
    run.nodes = res.bab_nodes
    run.singles, run.single_margins = [], []
    return None


def _finish_singles(run: _Run) -> LevelResult:
    """Branch and bound (or a counterexample search) on the single ``t``-subsets."""
    if not run.singles:
        return run.result(Status.PROVEN)
    lo, hi = run.boxes(run.singles)
    labels = run.lab.expand(len(run.singles))
    if not run.settings.use_bab:
        if run.settings.attack_steps == 0 or run.expired():  # no search asked for, or no time left
            return run.result(Status.UNKNOWN)
        found, x = search_counterexamples(run.target, lo, hi, labels)
        if bool(found.any()):
            i = int(torch.nonzero(found)[0])
            return run.result(Status.FALSIFIED, 0, x[i], tuple(run.singles[i]))
        return run.result(Status.UNKNOWN)
    remaining = run.settings.time_limit - (time.perf_counter() - run.start)
    if remaining <= 0:
        return run.result(Status.UNKNOWN)
    res = branch_and_bound(run.target, lo, hi, labels, dataclasses.replace(run.settings, time_limit=remaining),
                           initial_margins=torch.stack(run.single_margins))
    for i, s in enumerate(res.status):
        if s is Status.FALSIFIED:
            return run.result(Status.FALSIFIED, res.nodes, res.counterexamples[i], tuple(run.singles[i]))
    if all(s is Status.PROVEN for s in res.status):
        return run.result(Status.PROVEN, res.nodes)
    return run.result(Status.UNKNOWN, res.nodes)
