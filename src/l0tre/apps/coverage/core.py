""":func:`coverage`: neuron coverage of seeds, minimal-L0 tests for the uncovered neurons, and
proofs for the neurons no input can activate (paper Case Study 3, Sec. 5.3)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ...certify.hidden import hidden_bounds
from ...certify.target import resolve
from ...classifier import Classifier, ModelLike, as_classifier
from ...engine.grid import check_epsilon, colours, grid_values
from ...engine.options import check_inputs
from ...validate import non_negative_int, positive_int, positive_seconds
from .candidates import Candidates, Grid
from .neurons import NeuronKind, Neurons
from .reach import ReachSettings, reach_phase
from .result import CoverageResult
from .search import Search, SearchSettings, _Stop

__all__ = ["check_threshold", "coverage", "unreachable_neurons"]

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


def unreachable_neurons(clf: Classifier, neurons: Neurons, threshold: float) -> Tensor:
    """``(T,)`` bool: neurons whose value is proven ``≤ threshold`` for *every* input in the
    model's input box ``[lo, hi]^(C·H·W)`` (interval bounds of the pre-activations in float64,
    :func:`l0tre.certify.hidden.hidden_bounds`, with :data:`PROOF_MARGIN` to spare)."""
    shape = tuple(int(s) for s in neurons.graph.input_shape)
    proof = resolve(clf, shape, dtype=torch.float64).graph
    if [n.name for n in proof.nodes] != [n.name for n in neurons.graph.nodes]:
        raise RuntimeError("the float64 proof graph does not match the model's graph")
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
        bounds: input range ``(lo, hi)`` (default: the classifier's, else ``(0, 1)``).
        device: where the model runs.
        show_progress: a progress bar per level.

    Returns:
        :class:`CoverageResult`.

    Raises:
        ValueError, TypeError: bad arguments, or a model without hidden ReLU activations.
    """
    start = time.monotonic()
    clf = as_classifier(model, bounds=bounds, device=device)
    kind = NeuronKind.parse(neurons)
    thr = check_threshold(threshold)
    steps = check_epsilon(epsilon)
    t_max = non_negative_int("t_max", t_max)
    budget = positive_seconds("time_budget", time_budget)
    rows = positive_int("batch_size", batch_size)
    max_evals = positive_int("max_evaluations", max_evaluations)
    x = check_inputs(x, clf).to(clf.device)
    shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    graph = resolve(clf, shape, dtype=clf.dtype, device=clf.device).graph
    found = Neurons.discover(graph, kind, layers)
    seed_best = _seed_values(found, x, rows)
    before = seed_best > thr
    unreachable = unreachable_neurons(clf, found, thr) if prove else torch.zeros_like(before)
    palette = colours(grid_values(steps, clf.bounds, x.dtype), shape[0])
    settings = SearchSettings(thr, rows, max_evals, deadline=None if budget is None else start + budget,
                              show_progress=show_progress)
    search = Search(found, Grid.build(x, palette), settings, before.clone(), unreachable & ~before)
    stopped = "measure_only" if t_max == 0 else "t_max"

    def snapshot() -> None:
        if on_snapshot is not None:
            on_snapshot(_result(clf, x, found, search, before, unreachable, seed_best, "snapshot",
                                time.monotonic() - start))

    try:
        for t in range(1, t_max + 1):
            if search.run_level(t) is None:
                stopped = "complete"
                break
            snapshot()
        if reach and t_max > 0 and stopped != "complete":
            if reach_phase(search, ReachSettings(), clf.bounds) is None:
                stopped = "complete"
            else:
                snapshot()
    except _Stop:
        stopped = "time_budget"
    except KeyboardInterrupt:
        stopped = "interrupted"
    return _result(clf, x, found, search, before, unreachable, seed_best, stopped, time.monotonic() - start)


def _result(clf: Classifier, x: Tensor, found: Neurons, search: Search, before: Tensor, unreachable: Tensor,
            seed_best: Tensor, stopped: str, seconds: float) -> CoverageResult:
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
                          per_neuron_seed_best=seed_best)


def _one(seed: int, pos: tuple[int, ...], col: tuple[int, ...]) -> Candidates:
    """One stored test as a batch of one candidate."""
    return Candidates(torch.tensor([seed]), torch.tensor([pos], dtype=torch.int64).view(1, -1),
                      torch.tensor([col], dtype=torch.int64).view(1, -1))
