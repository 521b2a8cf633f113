"""Branch and bound: sound certificates, genuine counterexamples, budgets."""

from __future__ import annotations

import itertools

import pytest
import torch
from _certify_helpers import conv_net, forward_margin, milp_min_margins, mlp

from l0tre.certify import Status, build_graph, certify_boxes_bab, certify_subsets, subset_boxes


def _instances() -> list[tuple[torch.nn.Module, tuple[int, int, int], torch.Tensor, int,
                               torch.Tensor]]:
    out = []
    for seed in range(4):
        shape = (1, 3, 3)
        model = mlp(seed, shape, hidden=(8, 6))
        g = torch.Generator().manual_seed(100 + seed)
        x0 = torch.rand(shape, generator=g)
        label = int(build_graph(model, shape).forward(x0.unsqueeze(0)).argmax())
        subsets = torch.stack([torch.randperm(9, generator=g)[:2] for _ in range(6)])
        out.append((model, shape, x0, label, subsets))
    return out


def _search_free(model: torch.nn.Module, lo: torch.Tensor, hi: torch.Tensor, label: int,
                 steps: int = 30) -> float:
    """An independent search: a dense grid over the free coordinates (at most 3), random
    points and signed-gradient descent; returns the smallest margin seen."""
    free = torch.nonzero((hi > lo).flatten()).flatten()
    best = float("inf")
    grid = torch.linspace(0, 1, 21, dtype=torch.float64)
    if len(free) <= 3:
        pts = torch.cartesian_prod(*([grid] * len(free))).view(-1, len(free))
        x = lo.flatten().repeat(len(pts), 1)
        x[:, free] = lo.flatten()[free] + pts * (hi - lo).flatten()[free]
        best = min(best, float(forward_margin(model, x.view(-1, *lo.shape), label).min()))
    rnd = lo + (hi - lo) * torch.rand((500, *lo.shape), dtype=torch.float64)
    best = min(best, float(forward_margin(model, rnd, label).min()))
    m64 = __import__("copy").deepcopy(model).double()
    x = ((lo + hi) / 2).unsqueeze(0).clone()
    for _ in range(steps):
        x.requires_grad_(True)
        z = m64(x)
        others = torch.cat([z[:, :label], z[:, label + 1:]], 1)
        marg = z[:, label] - others.max(1).values
        (grad,) = torch.autograd.grad(marg.sum(), x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - 0.1 * (hi - lo) * grad.sign(), lo), hi)
        best = min(best, float(marg.detach().min()))
    return best


def test_bab_is_sound_and_beats_plain_crown() -> None:
    crown_total = bab_total = 0
    for model, shape, x0, label, subsets in _instances():
        graph = build_graph(model, shape)
        crown = certify_subsets(graph, x0, label, subsets, method="crown")
        lo, hi = subset_boxes(x0.double(), subsets)
        bab = certify_boxes_bab(graph, lo, hi, label, max_depth=10, max_nodes=3000,
                                time_limit=20)
        crown_total += crown.n_proven
        bab_total += bab.n_proven
        for i in range(len(subsets)):
            exact = min(v for v, _ in milp_min_margins(model, lo[i].numpy(), hi[i].numpy(), label,
                                                        shape))
            if bool(crown.proven[i]):
                assert bab.status[i] is Status.PROVEN
            if bab.status[i] is Status.PROVEN:
                assert exact > -1e-6
                assert _search_free(model, lo[i], hi[i], label) > 0
                assert bool((bab.margin_lb[i] <= torch.tensor(
                    [v for v, _ in milp_min_margins(model, lo[i].numpy(), hi[i].numpy(), label,
                                                    shape)], dtype=torch.float64) + 1e-6).all())
            elif bab.status[i] is Status.FALSIFIED:
                x = bab.counterexamples[i]
                assert bool(((x >= lo[i]) & (x <= hi[i])).all())
                assert int(model(x.float().unsqueeze(0)).argmax()) != label
                assert exact < 1e-6
            if exact < -1e-3:
                assert bab.status[i] is Status.FALSIFIED
    assert bab_total > crown_total


def test_counterexamples_are_genuine_and_local() -> None:
    found = 0
    for seed in range(6):
        shape = (1, 4, 4)
        model = conv_net(seed)
        g = torch.Generator().manual_seed(seed)
        x0 = torch.rand(shape, generator=g)
        label = int(build_graph(model, shape).forward(x0.unsqueeze(0)).argmax())
        subsets = torch.stack([torch.randperm(16, generator=g)[:3] for _ in range(4)])
        lo, hi = subset_boxes(x0.double(), subsets)
        res = certify_boxes_bab(model, lo, hi, label, max_depth=8, max_nodes=1000,
                                time_limit=20)
        for i, x in res.counterexamples.items():
            assert res.status[i] is Status.FALSIFIED and not bool(res.proven[i])
            assert bool(((x >= lo[i]) & (x <= hi[i])).all())
            changed = (x.float() != x0).flatten().nonzero().flatten().tolist()
            assert set(changed) <= set(subsets[i].tolist())
            assert int(model(x.float().unsqueeze(0)).argmax()) != label
            found += 1
    assert found > 0


def test_budget_exhaustion_gives_unknown() -> None:
    """A safe box that one-shot CROWN cannot prove stays UNKNOWN under a one-node budget;
    an unsafe one is never PROVEN under any budget."""
    unknown = unsafe = 0
    for model, shape, x0, label, subsets in _instances():
        crown = certify_subsets(model, x0, label, subsets, method="crown")
        lo, hi = subset_boxes(x0.double(), subsets)
        for i in range(len(subsets)):
            if bool(crown.proven[i]):
                continue
            exact = min(v for v, _ in milp_min_margins(model, lo[i].numpy(), hi[i].numpy(),
                                                        label, shape))
            res = certify_boxes_bab(model, lo[i:i + 1], hi[i:i + 1], label, max_depth=3,
                                    max_nodes=1)
            if exact > 1e-3:
                assert res.status[0] is Status.UNKNOWN
                unknown += 1
            elif exact < -1e-3:
                assert res.status[0] is not Status.PROVEN
                unsafe += 1
    assert unknown > 0 and unsafe > 0


def test_proven_sets_survive_independent_search() -> None:
    for model, _shape, x0, label, subsets in _instances()[:2]:
        res = certify_subsets(model, x0, label, subsets, method="crown")
        lo, hi = subset_boxes(x0.double(), subsets)
        for i in torch.nonzero(res.proven).flatten().tolist():
            assert _search_free(model, lo[i], hi[i], label) > 0


@pytest.mark.parametrize("split", ["widest", "smear"])
def test_split_rules_cover_the_box(split: str) -> None:
    from l0tre.certify.bab import split_boxes
    from l0tre.certify.target import resolve

    model, shape, x0, label, subsets = _instances()[1]
    target = resolve(model, shape)
    lo, hi = subset_boxes(x0.double(), subsets)
    c_lo, c_hi = split_boxes(target, lo, hi, torch.full((len(lo),), label), split)
    b = len(lo)
    # children are inside the parent and their union is the parent
    for i in range(b):
        for child in (i, b + i):
            assert bool((c_lo[child] >= lo[i]).all() and (c_hi[child] <= hi[i]).all())
        diff = (c_hi[i] != hi[i]).flatten().nonzero().flatten()
        assert len(diff) == 1
        d = int(diff[0])
        assert float(c_hi[i].flatten()[d]) == float(c_lo[b + i].flatten()[d])
        others = [j for j in range(lo[i].numel()) if j != d]
        assert torch.equal(c_lo[i].flatten()[others], c_lo[b + i].flatten()[others])


def test_split_all_tiles_each_box() -> None:
    """Children of split_all cover their parent exactly: 2^k boxes, halves of every free
    coordinate, fixed coordinates untouched, and their volumes sum to the parent's."""
    from l0tre.certify.bab import split_all

    gen = torch.Generator().manual_seed(0)
    lo = torch.rand(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    hi = lo.clone()
    for b, feats in enumerate(([0, 5, 9], [1, 2, 3], [15, 7, 4])):
        for f in feats:
            hi[b, 0, f // 4, f % 4] = lo[b, 0, f // 4, f % 4] + 0.5 + b
    c_lo, c_hi, parent = split_all(lo, hi)
    assert c_lo.shape == (24, 1, 4, 4) and parent.tolist() == [b for b in range(3) for _ in range(8)]
    width = (c_hi - c_lo).flatten(1)
    for r in range(24):
        p = int(parent[r])
        free = (hi[p] > lo[p]).flatten()
        assert torch.equal(c_lo[r].flatten()[~free], lo[p].flatten()[~free])
        assert torch.allclose(width[r][free], (hi[p] - lo[p]).flatten()[free] / 2)
        assert bool((c_lo[r] >= lo[p]).all() and (c_hi[r] <= hi[p]).all())
    # distinct children: every corner combination once
    assert len({tuple(c_lo[r].flatten().tolist()) for r in range(24)}) == 24


def test_prove_by_halving_is_sound_against_milp() -> None:
    """Boxes it proves have an exact (MILP) minimum margin above zero; it proves more than the
    one-shot bound and never a box with a negative exact minimum."""
    from l0tre.certify.bab import prove_by_halving
    from l0tre.certify.boxes import bound_margins
    from l0tre.certify.settings import CertifySettings
    from l0tre.certify.target import resolve

    shape = (1, 3, 3)
    model = mlp(2, shape).double()
    target = resolve(model, shape)
    x0 = torch.rand(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    label = int(target.graph.forward(x0.unsqueeze(0)).argmax())
    subsets = torch.tensor(list(itertools.combinations(range(9), 3)))
    lo, hi = subset_boxes(x0, subsets)
    labels = torch.tensor([label]).expand(lo.shape[0])
    exact = torch.tensor([min(v for v, _ in milp_min_margins(model, lo[i].numpy(), hi[i].numpy(), label, shape))
                          for i in range(lo.shape[0])])
    shift = -float(exact.median())  # about half the boxes unsafe
    with torch.no_grad():
        model[-1].bias[label] += shift
    exact += shift
    target = resolve(model, shape)
    opts = CertifySettings(method="crown")
    once = (bound_margins(target, lo, hi, labels, opts) > 1e-6).all(1)
    halved, pieces = prove_by_halving(target, lo, hi, labels, opts, rounds=3)
    assert pieces > 0
    assert bool((exact[halved] > 0).all())
    assert int(halved.sum()) > int(once.sum())
    assert bool((exact < 0).any())  # not vacuous


def test_bab_per_class_thresholds() -> None:
    """``margin_tol`` as a ``(K,)`` tensor: a constant one decides like the scalar; raising one
    class's threshold above its exact minimum stops every proof."""
    shape = (1, 3, 3)
    model = mlp(5, shape).double()
    x0 = torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    label = int(model(x0.unsqueeze(0)).argmax())
    lo, hi = subset_boxes(x0, torch.tensor([[0, 4], [2, 6], [1, 8]]))
    scalar = certify_boxes_bab(model, lo, hi, label, time_limit=30)
    const = certify_boxes_bab(model, lo, hi, label, time_limit=30, margin_tol=torch.full((3,), 1e-6,
                                                                                         dtype=torch.float64))
    assert scalar.status == const.status and Status.PROVEN in scalar.status
    other = next(k for k in range(3) if k != label)
    exact = max(milp_min_margins(model, lo[i].numpy(), hi[i].numpy(), label, shape)[other][0] for i in range(3))
    tol = torch.full((3,), 1e-6, dtype=torch.float64)
    tol[other] = exact + 1.0
    raised = certify_boxes_bab(model, lo, hi, label, time_limit=10, max_nodes=500, margin_tol=tol)
    assert Status.PROVEN not in raised.status


def test_prove_by_halving_skips_unequal_or_wide_boxes() -> None:
    from l0tre.certify.bab import prove_by_halving
    from l0tre.certify.settings import CertifySettings
    from l0tre.certify.target import resolve

    shape = (1, 3, 3)
    model = mlp(1, shape).double()
    x0 = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = resolve(model, shape)
    opts = CertifySettings(method="crown")
    mixed_lo, mixed_hi = subset_boxes(x0, torch.tensor([[0, 1, -1], [2, 3, 4]]))  # 2 and 3 free pixels
    wide_lo, wide_hi = subset_boxes(x0, torch.tensor([[0, 1, 2, 3, 4]]))
    for lo, hi in ((mixed_lo, mixed_hi), (wide_lo, wide_hi)):
        proven, pieces = prove_by_halving(target, lo, hi, torch.zeros(lo.shape[0], dtype=torch.long), opts)
        assert pieces == 0 and not bool(proven.any())
