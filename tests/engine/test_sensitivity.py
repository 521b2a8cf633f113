"""Subspace sensitivity (``l0tre.engine.sensitivity``) against a plain-python brute force.

The oracle enumerates, with ``itertools``, every t-subset of the features (colex order: sorted by
the largest member first) and every grid point of it, builds each perturbed image one at a time
and runs the bare ``torch.nn.Module`` on it. Nothing of the engine is used on that side: not the
unranking, the palette, the valid-colour mask nor the objective.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from dataclasses import dataclass, fields

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import l0tre
from l0tre.engine.features import FeatureKind, FeatureSpace
from l0tre.engine.grid import colours, grid_values, valid_colours
from l0tre.engine.sensitivity import (
    LevelContext,
    UnitResult,
    candidate_points,
    empty_unit,
    evaluate_unit,
    merge_units,
    sort_topk,
)
from l0tre.engine.subspaces import binomial_table, unrank
from l0tre.objectives import Misclassification

from .test_oracle import random_cnn, random_mlp

TOL = 1e-9  # float64 nets: the oracle runs one image at a time, the engine in batches


# -- the oracle ---------------------------------------------------------------------------------
def oracle_palette(steps: int, channels: int) -> list[tuple[float, ...]]:
    """Every colour, row-major over channels (channel 0 most significant)."""
    grid = [k / steps for k in range(steps + 1)]
    return list(itertools.product(grid, repeat=channels))


def colex_subsets(n: int, t: int) -> list[tuple[int, ...]]:
    """All t-subsets of ``range(n)`` in colex order (rank = position in this list)."""
    return sorted(itertools.combinations(range(n), t), key=lambda s: s[::-1])


def feature_cells(shape: tuple[int, int, int], kind: str, f: int) -> list[tuple[int, int, int]]:
    """The tensor elements ``(c, h, w)`` of full-image feature ``f`` (channel order)."""
    c, h, w = shape
    if kind == "pixel":
        return [(ch, f // w, f % w) for ch in range(c)]
    return [(f // (h * w), (f // w) % h, f % w)]


def feature_value(x: torch.Tensor, cells: list[tuple[int, int, int]]) -> tuple[float, ...]:
    return tuple(float(x[cell]) for cell in cells)


def net_values(net: nn.Module, x: torch.Tensor, j: int) -> tuple[float, float, bool, int]:
    """(margin, log-softmax of class j, label changed, label) of one image, bare module."""
    with torch.no_grad():
        s = net(x.unsqueeze(0))[0]
    conf = float(torch.log_softmax(s, 0)[j])
    logits = s.tolist()
    margin = logits[j] - max(v for k, v in enumerate(logits) if k != j)
    label = max(range(len(logits)), key=lambda k: (logits[k], -k))  # first maximum, as argmax
    return margin, conf, label != j, label


def exact_mlp(shape: tuple[int, int, int], classes: int, seed: int, hidden: int = 6) -> nn.Module:
    """Small integer weights, half-integer biases: on inputs that are multiples of 1/4 every
    output is computed exactly in float64, whatever the batch or the summation order, so results
    must be bit-identical and exact ties (resolved by rank, then point) are frequent."""
    g = torch.Generator().manual_seed(seed)
    d = shape[0] * shape[1] * shape[2]
    m = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, classes)).double()
    with torch.no_grad():
        for p in m.parameters():
            scale = 1.0 if p.dim() == 2 else 0.5
            p.copy_(torch.randint(-3, 4, p.shape, generator=g).double() * scale)
    return m.eval()


def quarter_inputs(shape: tuple[int, int, int], n: int, seed: int) -> torch.Tensor:
    """Inputs on the 1/4 grid (some elements equal to ε = 1/2 grid values)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 5, (n, *shape), generator=g).double() / 4


@dataclass
class SubsetTruth:
    rank: int
    conf: float  # min over valid points
    score: float  # min over valid points
    point: int  # smallest point index reaching ``score``


@dataclass
class InputTruth:
    evaluations: int
    subsets: list[SubsetTruth]  # subsets with at least one valid point, by rank
    witness: tuple[float, int, int] | None  # (score, rank, point) of the best adversarial point


def brute_force_unit(
    net: nn.Module, x0: torch.Tensor, kind: str, steps: int, t: int, r0: int, r1: int,
    positions: list[int] | None = None,
) -> list[InputTruth]:
    """Per input: every grid point of subsets with colex ranks ``[r0, r1)``."""
    shape = tuple(x0.shape[1:])
    c, h, w = shape
    full_n = h * w if kind == "pixel" else c * h * w
    feats = list(range(full_n)) if positions is None else positions
    channels = c if kind == "pixel" else 1
    palette = oracle_palette(steps, channels)
    subsets = colex_subsets(len(feats), t)[r0:r1]
    out = []
    for x in x0:
        with torch.no_grad():
            j = int(net(x.unsqueeze(0))[0].argmax())
        cells = [feature_cells(shape, kind, f) for f in feats]
        orig = [feature_value(x, cl) for cl in cells]
        evaluations = 0
        truths: list[SubsetTruth] = []
        witness: tuple[float, int, int] | None = None
        for offset, sub in enumerate(subsets):
            rank = r0 + offset
            best: SubsetTruth | None = None
            for p, colour_idx in enumerate(itertools.product(range(len(palette)), repeat=t)):
                cols = [palette[ci] for ci in colour_idx]
                if any(col == orig[f] for f, col in zip(sub, cols, strict=True)):
                    continue  # equal to the original on a member: a point of a lower level
                xp = x.clone()
                for f, col in zip(sub, cols, strict=True):
                    for cell, v in zip(cells[f], col, strict=True):
                        xp[cell] = v
                margin, conf, success, _ = net_values(net, xp, j)
                evaluations += 1
                if best is None:
                    best = SubsetTruth(rank, conf, margin, p)
                else:
                    best.conf = min(best.conf, conf)
                    if margin < best.score:
                        best.score, best.point = margin, p
                if success and (witness is None or (margin, rank, p) < witness):
                    witness = (margin, rank, p)
            if best is not None:
                truths.append(best)
        out.append(InputTruth(evaluations, truths, witness))
    return out


def check_unit(unit: UnitResult, truth: list[InputTruth], k: int) -> None:
    assert unit.conf.shape == unit.score.shape == unit.rank.shape == unit.point.shape == (len(truth), k)
    for i, tr in enumerate(truth):
        assert int(unit.evaluations[i]) == tr.evaluations
        top = sorted(tr.subsets, key=lambda s: (s.conf, s.score, s.rank))[:k]
        want_rank = [s.rank for s in top] + [-1] * (k - len(top))
        assert unit.rank[i].tolist() == want_rank, (i, unit.rank[i].tolist(), want_rank)
        assert unit.point[i].tolist() == [s.point for s in top] + [-1] * (k - len(top))
        torch.testing.assert_close(unit.conf[i, : len(top)], torch.tensor([s.conf for s in top], dtype=torch.float64),
                                   rtol=0, atol=TOL)
        torch.testing.assert_close(unit.score[i, : len(top)], torch.tensor([s.score for s in top], dtype=torch.float64),
                                   rtol=0, atol=TOL)
        assert bool(torch.isinf(unit.conf[i, len(top):]).all()) and bool(torch.isinf(unit.score[i, len(top):]).all())
        if tr.witness is None:
            assert int(unit.w_rank[i]) == -1 and int(unit.w_point[i]) == -1 and float(unit.w_score[i]) == float("inf")
        else:
            score, rank, point = tr.witness
            assert (int(unit.w_rank[i]), int(unit.w_point[i])) == (rank, point)
            assert float(unit.w_score[i]) == pytest.approx(score, abs=TOL)
            assert score < 0  # an adversarial point has a negative margin


# -- running the engine ---------------------------------------------------------------------------
@dataclass
class Setup:
    clf: l0tre.Classifier
    x0: torch.Tensor
    ref: torch.Tensor
    valid: torch.Tensor
    space: FeatureSpace
    palette: torch.Tensor

    def ctx(self, t: int) -> LevelContext:
        return LevelContext.build(self.space, self.palette, t, binomial_table(self.space.n, t))

    def unit(self, t: int, r0: int, r1: int, *, k: int, batch_size: int = 64, inputs: torch.Tensor | None = None,
             **kw: object) -> UnitResult:
        idx = torch.arange(self.x0.shape[0]) if inputs is None else inputs
        return evaluate_unit(self.clf, Misclassification(), self.x0, self.ref, self.valid, idx, self.ctx(t), r0, r1,
                             batch_size=batch_size, k=k, **kw)  # type: ignore[arg-type]


def make_setup(net: nn.Module, x0: torch.Tensor, kind: str, steps: int, positions: list[int] | None = None) -> Setup:
    clf = l0tre.Classifier(net)
    space = FeatureSpace(FeatureKind(kind), tuple(x0.shape[1:]))  # type: ignore[arg-type]
    if positions is not None:
        space = space.restrict(torch.tensor(positions))
    palette = colours(grid_values(steps, (0.0, 1.0), x0.dtype), space.channels)
    valid = valid_colours(space.values(x0), palette)
    ref = Misclassification().reference(clf, x0)
    return Setup(clf, x0, ref, valid, space, palette)


def inputs_with_grid_values(shape: tuple[int, int, int], n: int, seed: int, steps: int) -> torch.Tensor:
    """Random inputs, some elements exactly on the grid (those colours are not perturbations)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g, dtype=torch.float64)
    on_grid = torch.rand(n, *shape, generator=g) < 0.3
    snapped = torch.randint(0, steps + 1, (n, *shape), generator=g).double() / steps
    return torch.where(on_grid, snapped, x)


def assert_units_equal(a: UnitResult, b: UnitResult) -> None:
    for f in fields(UnitResult):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        assert torch.equal(va, vb), (f.name, va, vb)


# -- evaluate_unit vs the brute force --------------------------------------------------------------
def case_inputs(net: str, shape: tuple[int, int, int], n: int, seed: int, steps: int) -> tuple[nn.Module, torch.Tensor]:
    if net == "exact":
        return exact_mlp(shape, 3, seed), quarter_inputs(shape, n, seed + 100)
    return random_mlp(shape, 3, seed), inputs_with_grid_values(shape, n, seed + 100, steps)


CASES = [
    # net, seed, shape, kind, steps, t, (r0, r1) or None for all, k, positions
    ("float", 0, (1, 2, 3), "pixel", 2, 1, None, 2, None),
    ("float", 1, (1, 2, 3), "pixel", 2, 2, None, 4, None),
    ("float", 0, (1, 2, 3), "pixel", 2, 2, (3, 11), 20, None),  # k larger than the range: padded
    ("float", 1, (1, 2, 3), "pixel", 2, 3, (5, 17), 3, None),
    ("float", 0, (2, 2, 2), "pixel", 2, 2, (1, 5), 3, None),  # 9 colours per pixel
    ("float", 1, (2, 2, 2), "element", 2, 2, (4, 23), 5, None),
    ("float", 0, (1, 2, 4), "pixel", 4, 2, (0, 15), 6, None),  # ε = 1/4
    ("float", 1, (2, 3, 3), "pixel", 2, 2, None, 4, [0, 4, 5, 7]),  # a restricted feature space
    ("exact", 0, (1, 2, 3), "pixel", 2, 2, None, 6, None),  # exact ties: rank, then point decide
    ("exact", 1, (2, 2, 2), "element", 2, 3, (10, 40), 7, None),
    ("exact", 2, (2, 2, 2), "pixel", 2, 1, None, 3, None),
]


@pytest.mark.parametrize(("net_kind", "seed", "shape", "kind", "steps", "t", "span", "k", "positions"), CASES)
def test_evaluate_unit_matches_brute_force(
    net_kind: str, seed: int, shape: tuple[int, int, int], kind: str, steps: int, t: int,
    span: tuple[int, int] | None, k: int, positions: list[int] | None,
) -> None:
    net, x0 = case_inputs(net_kind, shape, 3, seed, steps)
    s = make_setup(net, x0, kind, steps, positions)
    r0, r1 = span if span is not None else (0, math.comb(s.space.n, t))
    truth = brute_force_unit(net, x0, kind, steps, t, r0, r1, positions)
    assert sum(tr.evaluations for tr in truth) > 0
    unit = s.unit(t, r0, r1, k=k, batch_size=37, inputs=torch.tensor([7, 2, 5]))
    assert unit.inputs.tolist() == [7, 2, 5]
    check_unit(unit, truth, k)


def test_brute_force_case_has_witnesses_and_misses() -> None:
    """The oracle comparison is not vacuous: some inputs have adversarial points, others none."""
    shape = (1, 2, 3)
    net = random_mlp(shape, 3, 3)
    x0 = inputs_with_grid_values(shape, 6, 4, 2)
    truth = brute_force_unit(net, x0, "pixel", 2, 1, 0, 6)
    assert any(tr.witness is not None for tr in truth) and any(tr.witness is None for tr in truth)
    check_unit(make_setup(net, x0, "pixel", 2).unit(1, 0, 6, k=3), truth, 3)


def test_exact_net_has_ties() -> None:
    """The exact-arithmetic case really exercises tie-breaking: some subset's best score is
    reached by more than one point, and some two subsets share their (conf, score) key."""
    shape = (1, 2, 3)
    net, x0 = case_inputs("exact", shape, 3, 0, 2)
    point_ties = key_ties = 0
    for x in x0:
        with torch.no_grad():
            j = int(net(x.unsqueeze(0))[0].argmax())
        keys = []
        for sub in colex_subsets(6, 2):
            scores = []
            for cols in itertools.product([0.0, 0.5, 1.0], repeat=2):
                if any(float(x.view(-1)[f]) == v for f, v in zip(sub, cols, strict=True)):
                    continue
                xp = x.clone()
                for f, v in zip(sub, cols, strict=True):
                    xp.view(-1)[f] = v
                margin, conf, _, _ = net_values(net, xp, j)
                scores.append((margin, conf))
            best = min(m for m, _ in scores)
            point_ties += sum(m == best for m, _ in scores) > 1
            keys.append((min(c for _, c in scores), best))
        key_ties += len(keys) - len(set(keys))
    assert point_ties > 0 and key_ties > 0


def test_evaluate_unit_through_the_incremental_chain_matches_brute_force() -> None:
    from l0tre.execution.incremental import IncrementalPrefix

    shape = (1, 5, 5)
    net = random_cnn(shape, 4, 3)
    x0 = inputs_with_grid_values(shape, 3, 9, 2)
    s = make_setup(net, x0, "pixel", 2)
    inc = IncrementalPrefix.build(s.clf, shape, windows=2)
    assert inc is not None
    for t, span in ((1, (0, 25)), (2, (10, 40))):
        truth = brute_force_unit(net, x0, "pixel", 2, t, *span)
        check_unit(s.unit(t, *span, k=5, batch_size=29, incremental=inc), truth, 5)


# -- invariances --------------------------------------------------------------------------------
DISCRETE = ("inputs", "rank", "point", "w_rank", "w_point", "evaluations")


@pytest.mark.parametrize(("net_kind", "kind"), [("exact", "pixel"), ("exact", "element"), ("float", "pixel")])
def test_evaluate_unit_batch_size_invariant_and_reports_every_batch(net_kind: str, kind: str) -> None:
    """Exact nets: bit-identical for every batch size. Float nets: the same subsets, points and
    witnesses; values within rounding (BLAS sums a row differently in a batch of 1)."""
    shape = (1, 2, 3) if kind == "pixel" else (2, 1, 3)
    net, x0 = case_inputs(net_kind, shape, 4, 5, 2)
    s = make_setup(net, x0, kind, 2)
    total = math.comb(s.space.n, 2)
    results = []
    for batch_size in (1, 5, 64, 100_000):
        calls: list[int] = []
        u = s.unit(2, 0, total, k=6, batch_size=batch_size, on_batch=calls.append)
        assert sum(calls) == int(u.evaluations.sum())
        assert all(0 < c <= batch_size for c in calls)
        results.append(u)
    for u in results[1:]:
        if net_kind == "exact":
            assert_units_equal(results[0], u)
            continue
        for name in DISCRETE:
            assert torch.equal(getattr(results[0], name), getattr(u, name)), name
        for name in ("conf", "score", "w_score"):
            torch.testing.assert_close(getattr(u, name), getattr(results[0], name), rtol=0, atol=1e-12)


SPLIT_T, SPLIT_K = 2, 4
SPLIT_TOTAL = math.comb(6, SPLIT_T)


@functools.cache
def split_setup() -> tuple[Setup, UnitResult]:
    shape = (1, 2, 3)
    s = make_setup(exact_mlp(shape, 3, 4), quarter_inputs(shape, 3, 8), "pixel", 2)
    return s, s.unit(SPLIT_T, 0, SPLIT_TOTAL, k=SPLIT_K)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.sets(st.integers(1, SPLIT_TOTAL - 1), max_size=6), order_seed=st.integers(0, 10_000),
       batch_size=st.sampled_from([3, 16, 1000]))
def test_merged_units_equal_one_unit_over_the_union(cuts: set[int], order_seed: int, batch_size: int) -> None:
    """Units over any split of the ranks, merged in any order, equal one unit over all of them
    (exact net: bit-identical values, ties across units resolved alike)."""
    s, whole = split_setup()
    bounds = [0, *sorted(cuts), SPLIT_TOTAL]
    parts = [s.unit(SPLIT_T, a, b, k=SPLIT_K, batch_size=batch_size) for a, b in itertools.pairwise(bounds)]
    random.Random(order_seed).shuffle(parts)
    merged = parts[0]
    for p in parts[1:]:
        merged = merge_units(merged, p, SPLIT_K)
    assert_units_equal(merged, whole)
    if len(parts) >= 2:  # and each single merge is symmetric
        assert_units_equal(merge_units(parts[0], parts[1], SPLIT_K), merge_units(parts[1], parts[0], SPLIT_K))


def test_merge_with_an_empty_unit_is_identity_and_other_inputs_are_refused() -> None:
    _, whole = split_setup()
    e = empty_unit(torch.arange(3), SPLIT_K, torch.float64)
    assert_units_equal(merge_units(whole, e, SPLIT_K), whole)
    assert_units_equal(merge_units(e, whole, SPLIT_K), whole)
    with pytest.raises(ValueError, match="different inputs"):
        merge_units(whole, empty_unit(torch.tensor([0, 1, 3]), SPLIT_K, torch.float64), SPLIT_K)


# -- sort_topk and candidate_points ----------------------------------------------------------------
@st.composite
def topk_rows(draw: st.DrawFn) -> tuple[list[list[tuple[float, float, int, int]]], int]:
    rows, width = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    k = draw(st.integers(1, width))
    data = []
    for _ in range(rows):
        ranks = draw(st.permutations(list(range(50))))[:width]
        row = []
        for r in ranks:
            if draw(st.booleans()) and draw(st.booleans()):  # an empty slot, as empty_unit fills it
                row.append((float("inf"), float("inf"), -1, -1))
            else:  # few distinct values: many ties on conf and on score
                conf, score = float(draw(st.integers(-3, 3))), float(draw(st.integers(-2, 2)))
                row.append((conf, score, r, draw(st.integers(0, 80))))
        data.append(row)
    return data, k


@settings(max_examples=200, deadline=None)
@given(case=topk_rows())
def test_sort_topk_matches_python_sort(case: tuple[list[list[tuple[float, float, int, int]]], int]) -> None:
    data, k = case
    cols = [torch.tensor([[e[i] for e in row] for row in data]) for i in range(4)]
    conf, score = cols[0].double(), cols[1].double()
    rank, point = cols[2].long(), cols[3].long()
    got = sort_topk(conf, score, rank, point, k)
    for r, row in enumerate(data):
        want = sorted(row, key=lambda e: (e[0], e[1], math.inf if e[2] < 0 else e[2]))[:k]
        assert got[0][r].tolist() == [e[0] for e in want]
        assert got[1][r].tolist() == [e[1] for e in want]
        assert got[2][r].tolist() == [e[2] for e in want]
        assert got[3][r].tolist() == [e[3] for e in want]


@pytest.mark.parametrize(("shape", "kind", "t"), [((1, 2, 3), "pixel", 2), ((2, 2, 2), "pixel", 2),
                                                  ((2, 1, 3), "element", 3)])
def test_candidate_points_are_exactly_the_points_off_the_original(
    shape: tuple[int, int, int], kind: str, t: int,
) -> None:
    x0 = inputs_with_grid_values(shape, 3, 21, 2)
    x0[0] = torch.randint(0, 3, shape, generator=torch.Generator().manual_seed(0)).double() / 2  # all on the grid
    s = make_setup(random_mlp(shape, 3, 0), x0, kind, 2)
    ctx = s.ctx(t)
    subsets = unrank(torch.arange(math.comb(s.space.n, t)), s.space.n, t)
    got = candidate_points(s.valid, subsets, ctx).tolist()
    channels = shape[0] if kind == "pixel" else 1
    palette = oracle_palette(2, channels)
    want = []
    for a, x in enumerate(x0):
        orig = [feature_value(x, feature_cells(shape, kind, f)) for f in range(s.space.n)]
        for si, sub in enumerate(colex_subsets(s.space.n, t)):
            for p, colour_idx in enumerate(itertools.product(range(len(palette)), repeat=t)):
                if all(palette[ci] != orig[f] for f, ci in zip(sub, colour_idx, strict=True)):
                    want.append([a, si, p])
    assert got == want  # same triples, row-major (input, subset, point)
    assert len(got) < 3 * len(subsets) * len(palette) ** t  # some points were skipped
    # and none of them puts a member back on its original value
    vals = ctx.values(torch.tensor([g[2] for g in got]))  # (M, t, Cf)
    orig_vals = s.space.values(x0)[torch.tensor([g[0] for g in got]).unsqueeze(1), subsets[[g[1] for g in got]]]
    assert bool((vals != orig_vals).any(dim=2).all())
