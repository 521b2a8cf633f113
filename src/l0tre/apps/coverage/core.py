""":func:`coverage`: neuron coverage of seeds, minimal-L0 tests for the uncovered neurons, and
proofs for the neurons no input can activate (paper Case Study 3, Sec. 5.3)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ...certify.graph import Graph
from ...certify.hidden import hidden_bounds
from ...certify.target import resolve
from ...classifier import Classifier, ModelLike, as_classifier
from ...engine.grid import check_epsilon, colours, grid_values
from ...engine.options import check_inputs
from ...host_memory import keep_freed_memory
from ...validate import non_negative_int, positive_int, positive_seconds
from .candidates import Candidates, Grid
from .certified import CertifyCoverage, NotCoverable, prove_not_coverable
from .neurons import NeuronKind, Neurons
from .proofs import ProofSettings, TightProof, tighten_unreachable
from .reach import ReachSettings, reach_phase
from .result import CoverageResult
from .search import Search, SearchSettings, _Stop

__all__ = ["check_threshold", "coverage", "proof_graph", "unreachable_neurons"]

#: added to the pre-activation bounds before a neuron is proven unreachable (float64 bounds,
#: float32 model)
PROOF_MARGIN = 1e-6


def check_threshold(threshold: object) -> float:
    """``threshold`` as a finite float ``≥ 0``."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold: expected a number >= 0, got {type(threshold).__name__} {threshold!r}")
    if not math.isfinite(float(threshold)) or threshold < 0:
        raise ValueError(f"threshold: expected a finite number >= 0 (ReLU outputs are >= 0, so a negative "
                         f"threshold counts every neuron as covered), got {threshold}")
    return float(threshold)


def proof_graph(clf: Classifier, neurons: Neurons) -> Graph:
    """The model's graph in float64 (for proofs), node for node the same as ``neurons.graph``."""
    shape = tuple(int(s) for s in neurons.graph.input_shape)
    proof = resolve(clf, shape, dtype=torch.float64).graph
    if [n.name for n in proof.nodes] != [n.name for n in neurons.graph.nodes]:
        raise RuntimeError("the float64 proof graph does not match the model's graph")
    return proof


def unreachable_neurons(clf: Classifier, neurons: Neurons, threshold: float, proof: Graph | None = None) -> Tensor:
    """``(T,)`` bool: neurons whose value is proven ``≤ threshold`` for *every* input in the
    model's input box ``[lo, hi]^(C·H·W)`` (interval bounds of the pre-activations in float64,
    :func:`l0tre.certify.hidden.hidden_bounds`, with :data:`PROOF_MARGIN` to spare)."""
    shape = tuple(int(s) for s in neurons.graph.input_shape)
    proof = proof if proof is not None else proof_graph(clf, neurons)
    lo = torch.full((1, *shape), float(clf.bounds[0]), dtype=torch.float64)
    hi = torch.full((1, *shape), float(clf.bounds[1]), dtype=torch.float64)
    bounds = hidden_bounds(proof, lo, hi, [layer.pre for layer in neurons.layers], intermediate="ibp")
    out = []
    for layer in neurons.layers:
        ub = (bounds[layer.pre][1][0] + PROOF_MARGIN).clamp(min=0)  # the value's bound, with margin
        if neurons.kind is NeuronKind.CHANNEL and ub.dim() == 3:
            ub = ub.mean(dim=(1, 2))
        out.append(ub.flatten().cpu() <= threshold)
    return torch.cat(out)


def _seed_values(neurons: Neurons, x: Tensor, batch_size: int) -> Tensor:
    """The largest value of each neuron over the seeds ``(T,)``."""
    best: Tensor | None = None
    for i in range(0, x.shape[0], batch_size):
        v = neurons.values(x[i:i + batch_size])[0].amax(dim=0).float().cpu()
        best = v if best is None else torch.maximum(best, v)
    assert best is not None  # x is not empty (check_inputs)
    return best


def coverage(
    model: ModelLike,
    x: Tensor | np.ndarray,
    *,
    neurons: str = "channel",
    threshold: float = 0.0,
    epsilon: float = 0.5,
    t_max: int = 3,
    time_budget: float | None = None,
    layers: Sequence[str] | None = None,
    batch_size: int = 256,
    max_evaluations: int = 50_000,
    prove: bool = True,
    reach: bool = True,
    on_snapshot: Callable[[CoverageResult], None] | None = None,
    certify: bool = False,
    certify_t: int = 1,
    certify_time: float | None = None,
    proof: ProofSettings | None = None,
    bounds: tuple[float, float] | None = None,
    device: str | torch.device | None = None,
    show_progress: bool = False,
) -> CoverageResult:
    """Neuron coverage of the seeds ``x`` and tests, at minimal L0 on the ε-grid, that activate
    the neurons no seed activates.

    Args:
        model: an :class:`l0tre.Classifier` or ``torch.nn.Module`` (traceable by torch.fx).
        x: ``(N, C, H, W)`` seeds in the model's bounds.
        neurons: ``"channel"`` (a conv channel's mean activation, a dense unit) or
            ``"element"`` (every element of every activation map).
        threshold: a neuron is covered when its value is ``> threshold`` (``≥ 0``).
        epsilon: grid step of the changed pixels' values (must divide 1).
        t_max: largest number of changed pixels per test; ``0`` measures the seeds only.
        time_budget: seconds; the tests found so far are returned (Ctrl-C likewise).
        layers: names of the hidden activations to count (default: all).
        batch_size: candidate tests per forward pass (results do not depend on it).
        max_evaluations: candidates per level; a level that fits is searched exhaustively.
        prove: bound the neurons over the whole input domain; those that can never exceed
            the threshold are reported ``unreachable`` and not searched.
        reach: after the grid levels, the reachability phase for the neurons still open
            (:mod:`.reach`: gradient ascent over the input box, then a sparse test from a seed;
            re-checked, L0 not claimed minimal).
        on_snapshot: called with the result so far after every level (and the reach phase);
            what it raises stops the search (KeyboardInterrupt is reported as ``interrupted``).
        certify: prove, for every neuron not covered within L0 ≤ ``certify_t`` (not by a seed,
            not by a test of at most ``certify_t`` pixels) and not unreachable, the largest
            ``t ≤ certify_t`` at which no change of ``t`` pixels of any seed, to any real values,
            fires it (:mod:`.certified`); ``certify_time``: seconds for that phase (default: the
            rest of ``time_budget``, else no limit).
        proof: settings of the backward (CROWN) unreachability proof of the neurons the search
            leaves open (:mod:`.proofs`; with ``prove``, after the search).
        bounds: input range ``(lo, hi)`` (default: the classifier's, else ``(0, 1)``).
        device: where the model runs.
        show_progress: a progress bar per level.

    Returns:
        :class:`CoverageResult`.

    Raises:
        ValueError, TypeError: bad arguments, or a model without hidden ReLU activations.
    """
    start = time.monotonic()
    keep_freed_memory()
    clf = as_classifier(model, bounds=bounds, device=device)
    kind = NeuronKind.parse(neurons)
    thr = check_threshold(threshold)
    steps = check_epsilon(epsilon)
    t_max = non_negative_int("t_max", t_max)
    budget = positive_seconds("time_budget", time_budget)
    rows = positive_int("batch_size", batch_size)
    max_evals = positive_int("max_evaluations", max_evaluations)
    if not isinstance(certify, bool):
        raise TypeError(f"certify: expected True or False, got {type(certify).__name__} {certify!r}")
    cert = CertifyCoverage(t_max=positive_int("certify_t", certify_t),
                           time_limit=positive_seconds("certify_time", certify_time))
    x = check_inputs(x, clf).to(clf.device)
    shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    graph = resolve(clf, shape, dtype=clf.dtype, device=clf.device).graph
    found = Neurons.discover(graph, kind, layers)
    seed_best = _seed_values(found, x, rows)
    before = seed_best > thr
    proof64 = proof_graph(clf, found) if prove or certify else None
    unreachable = unreachable_neurons(clf, found, thr, proof64) if prove else torch.zeros_like(before)
    palette = colours(grid_values(steps, clf.bounds, x.dtype), shape[0])
    settings = SearchSettings(thr, rows, max_evals, deadline=None if budget is None else start + budget,
                              show_progress=show_progress)
    search = Search(found, Grid.build(x, palette), settings, before.clone(), unreachable & ~before)

    def snapshot() -> None:
        if on_snapshot is not None:
            on_snapshot(_result(clf, x, found, search, before, unreachable, seed_best, "snapshot",
                                time.monotonic() - start))

    stopped = _search_phases(search, t_max, reach, clf.bounds, snapshot)
    extra = _Proofs()
    try:
        if prove and proof64 is not None and t_max > 0 and stopped != "interrupted":
            extra.tight = _tighten(proof64, found, search, thr, clf.bounds, proof or ProofSettings(), settings.deadline)
            if extra.tight is not None:
                unreachable = unreachable.clone()
                unreachable[extra.tight[0]] |= extra.tight[1].proven
        if certify and proof64 is not None and stopped != "interrupted":
            extra.certify_t = cert.t_max
            limit = cert.time_limit if cert.time_limit is not None or settings.deadline is None else max(
                1e-3, settings.deadline - time.monotonic())
            extra.certified = _certify(proof64, found, search, before, unreachable, x, thr, clf.bounds,
                                       CertifyCoverage(t_max=cert.t_max, time_limit=limit))
    except KeyboardInterrupt:
        stopped = "interrupted"
    return _result(clf, x, found, search, before, unreachable, seed_best, stopped, time.monotonic() - start, extra)


def _search_phases(search: Search, t_max: int, reach: bool, bounds: tuple[float, float],
                   snapshot: Callable[[], None]) -> str:
    """The grid levels ``1 … t_max``, then the reach phase; how the search stopped
    (``complete``, ``t_max``, ``measure_only``, ``time_budget`` or ``interrupted``)."""
    stopped = "measure_only" if t_max == 0 else "t_max"
    try:
        for t in range(1, t_max + 1):
            if search.run_level(t) is None:
                return "complete"
            snapshot()
        if reach and t_max > 0:
            if reach_phase(search, ReachSettings(), bounds) is None:
                return "complete"
            snapshot()
    except _Stop:
        stopped = "time_budget"
    except KeyboardInterrupt:
        stopped = "interrupted"
    return stopped


class _Proofs:
    """What the proofs after the search found (``None``: not run)."""

    def __init__(self) -> None:
        self.tight: tuple[Tensor, TightProof] | None = None
        self.certified: tuple[Tensor, NotCoverable] | None = None
        self.certify_t = 0


def _tighten(graph: Graph, found: Neurons, search: Search, thr: float, bounds: tuple[float, float],
             proof: ProofSettings, deadline: float | None) -> tuple[Tensor, TightProof] | None:
    """CROWN bounds of the neurons still open (:mod:`.proofs`) within the time left."""
    cols = search.open().cpu()
    if cols.numel() == 0:
        return None
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        proof = dataclasses.replace(proof, time_limit=min(proof.time_limit, left))
    return cols, tighten_unreachable(graph, found, cols, thr, bounds, proof)


def _certify(graph: Graph, found: Neurons, search: Search, before: Tensor, unreachable: Tensor, x: Tensor,
             thr: float, bounds: tuple[float, float], cert: CertifyCoverage) -> tuple[Tensor, NotCoverable]:
    """The neurons not covered within L0 ≤ ``t`` (by a seed or a test of at most ``t`` pixels)
    and not unreachable, and their proofs."""
    covered_within = before.clone().cpu()
    l0 = torch.tensor([len(p) for _, p, _ in search.tests], dtype=torch.int64)
    test_of = search.test_of.cpu()
    has = test_of >= 0
    covered_within[has] |= l0[test_of[has]] <= cert.t_max
    cols = (~covered_within & ~unreachable.cpu()).nonzero().squeeze(1)
    return cols, prove_not_coverable(graph, found, cols, x, thr, bounds, cert)


def _result(clf: Classifier, x: Tensor, found: Neurons, search: Search, before: Tensor, unreachable: Tensor,
            seed_best: Tensor, stopped: str, seconds: float, extra: _Proofs | None = None) -> CoverageResult:
    extra = extra or _Proofs()
    total = int(before.numel())
    upper = torch.full((total,), float("nan"), dtype=torch.float64)
    stats: dict[str, object] = {}
    if extra.tight is not None:
        cols, tight = extra.tight
        upper[cols] = tight.upper
        stats["crown_seconds"] = round(tight.seconds, 3)
        stats["milp_proven"] = tight.exact_proven
    not_cov = torch.full((total,), -1, dtype=torch.int64) if extra.certified is not None else torch.empty(0)
    if extra.certified is not None:
        cols, nc = extra.certified
        not_cov[cols] = nc.largest_t
        stats.update(certify_seconds=round(nc.seconds, 3), certify_calls=nc.calls, certify_complete=nc.complete,
                     revoked=int(nc.revoked.sum()),
                     fired_real={int(t): int((nc.fired == t).sum()) for t in torch.unique(nc.fired[nc.fired > 0])})
    k = len(search.tests)
    seed = torch.tensor([s for s, _, _ in search.tests], dtype=torch.int64)
    tests = [search.grid.images(_one(s, p, c)) for s, p, c in search.tests]
    xt = torch.cat(tests) if tests else x.new_zeros((0, *x.shape[1:]))
    l0 = torch.tensor([len(p) for _, p, _ in search.tests], dtype=torch.int64)
    label = clf.predict(xt) if k else torch.zeros(0, dtype=torch.int64)
    seed_label = clf.predict(x)[seed] if k else torch.zeros(0, dtype=torch.int64)
    return CoverageResult(neurons=found.kind.value, threshold=search.settings.threshold, layers=found.layers,
                          before=before, after=search.covered.clone(), unreachable=unreachable,
                          test_of=search.test_of.clone(), x=xt.detach().cpu(), seed=seed, l0=l0, label=label,
                          seed_label=seed_label, levels=tuple(search.levels), stopped=stopped, seconds=seconds,
                          per_neuron_seed_best=seed_best, upper_bound=upper, not_coverable=not_cov,
                          certify_t=extra.certify_t, proof_stats=stats)


def _one(seed: int, pos: tuple[int, ...], col: tuple[int, ...]) -> Candidates:
    """One stored test as a batch of one candidate."""
    return Candidates(torch.tensor([seed]), torch.tensor([pos], dtype=torch.int64).view(1, -1),
                      torch.tensor([col], dtype=torch.int64).view(1, -1))
