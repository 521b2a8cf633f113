"""Anytime behaviour: chunk invariance, interrupt + resume, time budget, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import l0tre
import l0tre.engine

from .oracle import brute_force_dm
from .test_oracle import random_cnn, random_mlp


def _inputs(shape: tuple[int, int, int], n: int = 5, seed: int = 3) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _same(a: l0tre.Result, b: l0tre.Result) -> None:
    assert torch.equal(a.lower, b.lower)
    assert torch.equal(a.upper, b.upper)
    assert torch.equal(a.found, b.found)
    assert torch.equal(a.adversarial, b.adversarial)
    assert torch.equal(a.adversarial_label, b.adversarial_label)
    assert a.t == b.t


@pytest.mark.parametrize("make", [random_mlp, random_cnn])
@pytest.mark.parametrize("shape,t_max,sizes", [((3, 3, 3), 2, (5, 64, 10_000)), ((1, 3, 3), 3, (1, 7, 10_000))])
def test_identical_results_for_different_chunk_sizes(
    make: object, shape: tuple[int, int, int], t_max: int, sizes: tuple[int, ...]
) -> None:
    model = make(shape, 4, 21)  # type: ignore[operator]
    x = _inputs(shape, 5)
    results = [l0tre.evaluate(model, x, epsilon=0.5, t_max=t_max, batch_size=b) for b in sizes]
    for r in results[1:]:
        _same(results[0], r)
    small_mem = l0tre.evaluate(model, x, epsilon=0.5, t_max=t_max, max_memory=60_000)
    _same(results[0], small_mem)


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    shape = (1, 4, 4)
    model = random_mlp(shape, 3, 5, hidden=16)
    x = _inputs(shape, 6, seed=9)
    full = l0tre.evaluate(model, x, epsilon=0.5, t_max=3, batch_size=16)
    n_snaps = len(list(l0tre.evaluate_iter(model, x, epsilon=0.5, t_max=3, batch_size=16, report_every=1e-9)))
    assert n_snaps > 6  # mid-level snapshots exist
    for stop_after in (1, 2, n_snaps // 2, n_snaps - 2):
        ckpt = tmp_path / f"ck{stop_after}.pt"
        gen = l0tre.evaluate_iter(model, x, epsilon=0.5, t_max=3, batch_size=16,
                                  report_every=1e-9, checkpoint=ckpt)
        for i, _ in enumerate(gen):
            if i + 1 >= stop_after:
                break
        gen.close()  # like Ctrl-C between snapshots
        assert ckpt.exists()
        resumed = l0tre.evaluate(model, x, epsilon=0.5, t_max=3, batch_size=16, checkpoint=ckpt)
        _same(full, resumed)


class _InterruptAfter(nn.Module):
    """Wraps a model and raises KeyboardInterrupt on the k-th forward call after ``armed``."""

    def __init__(self, inner: nn.Module, k: int) -> None:
        super().__init__()
        self.inner, self.k, self.calls, self.armed = inner, k, 0, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            self.calls += 1
            if self.calls == self.k:
                raise KeyboardInterrupt
        return self.inner(x)


def _run_armed(model: _InterruptAfter, x: torch.Tensor, **kw: object) -> l0tre.Result:
    """Prepare (not interrupted), then run with the interrupter armed; the engine turns the
    KeyboardInterrupt into a final snapshot."""
    engine = l0tre.api.prepare(model, x, **kw)  # type: ignore[arg-type]
    model.armed = True
    try:
        return list(engine.run())[-1]
    finally:
        model.armed = False


def test_keyboard_interrupt_returns_consistent_bounds_and_resumes(tmp_path: Path) -> None:
    shape = (1, 4, 4)
    inner = random_mlp(shape, 3, 8, hidden=16)
    x = _inputs(shape, 6, seed=2)
    counter = _InterruptAfter(inner, -1)
    full = _run_armed(counter, x, epsilon=0.5, t_max=3, batch_size=16, report_every=1e-9)
    total = counter.calls
    assert total > 10
    for k in (3, total // 3, total // 2, total - 1):
        ckpt = tmp_path / f"int{k}.pt"
        res = _run_armed(_InterruptAfter(inner, k), x, epsilon=0.5, t_max=3, batch_size=16,
                         checkpoint=ckpt, report_every=1e-9)
        assert res.stopped == "interrupted"
        # consistent: bounds bracket the final answer
        assert bool((res.lower <= full.lower).all()) and bool((res.upper >= full.upper).all())
        resumed = l0tre.evaluate(_InterruptAfter(inner, -1), x, epsilon=0.5, t_max=3, batch_size=16,
                                 checkpoint=ckpt)
        _same(full, resumed)


def test_evaluate_returns_last_snapshot_on_interrupt() -> None:
    """``evaluate`` itself: an interrupt inside the run returns bounds (no exception)."""
    shape = (1, 4, 4)
    inner = random_mlp(shape, 3, 8, hidden=16)
    x = _inputs(shape, 4, seed=2)

    class Hook(l0tre.engine.ProgressHook):
        def level_start(self, t: int, evaluations: int, inputs: int) -> None:
            wrapped.armed = True

    wrapped = _InterruptAfter(inner, 5)
    res = l0tre.evaluate(wrapped, x, epsilon=0.5, t_max=3, batch_size=16, progress=Hook())
    assert res.stopped == "interrupted"
    assert bool((res.lower <= res.upper).all())


def test_time_budget_stops_with_consistent_snapshot() -> None:
    shape = (1, 6, 6)
    model = random_mlp(shape, 3, 1, hidden=32)
    x = _inputs(shape, 8)
    res = l0tre.evaluate(model, x, epsilon=0.25, t_max=4, batch_size=8, time_budget=1e-6)
    assert res.stopped == "time_budget"
    assert bool((res.lower <= res.upper).all())
    check = l0tre.evaluate(model, x, epsilon=0.25, t_max=1)
    assert bool((res.lower <= check.lower).all())


def test_snapshots_monotone_and_final_reason() -> None:
    shape = (1, 3, 4)
    model = random_mlp(shape, 3, 4)
    x = _inputs(shape, 4)
    snaps = list(l0tre.evaluate_iter(model, x, epsilon=0.5, t_max=2, report_every=1e-9, batch_size=8))
    for a, b in zip(snaps, snaps[1:], strict=False):
        assert bool((b.lower >= a.lower).all()) and bool((b.upper <= a.upper).all())
        assert b.t >= a.t and b.evaluations >= a.evaluations
    assert snaps[-1].stopped in ("t_max", "converged")
    assert snaps[-1].t == 2 or snaps[-1].stopped == "converged"
    assert any(s.level_complete for s in snaps)


def test_evaluations_counted_inside_a_shard() -> None:
    """Snapshots inside a level report the evaluations done so far, not only finished shards."""
    shape = (1, 4, 4)
    model = random_mlp(shape, 3, 4)
    x = _inputs(shape, 1, seed=1)  # an input that stays open through level 2
    snaps = list(l0tre.evaluate_iter(model, x, epsilon=0.5, t_max=2, report_every=1e-9, batch_size=8))
    assert snaps[-1].t == 2 and snaps[-1].stopped == "t_max"
    level1_end = next(s.evaluations for s in snaps if s.level_complete and s.t == 1)
    final = snaps[-1].evaluations
    inside = [s.evaluations for s in snaps if not s.level_complete and level1_end < s.evaluations < final]
    # one input = one shard at t = 2: every snapshot inside the level is mid-shard
    assert len(inside) >= 2 and inside == sorted(inside)


def test_save_load_roundtrip_and_to_dict(tmp_path: Path) -> None:
    shape = (3, 2, 2)
    model = random_mlp(shape, 3, 3)
    x = _inputs(shape, 3)
    # top_k = 1 at t = 1: the upper-bound search is weak and some inputs stay open
    res = l0tre.evaluate(model, x, epsilon=0.5, t_max=1, top_k=1, labels=torch.tensor([0, 1, 2]))
    path = tmp_path / "r.pt"
    res.save(path)
    back = l0tre.Result.load(path)
    _same(res, back)
    d = back.to_dict(include_adversarial=True)
    assert d == res.to_dict(include_adversarial=True)  # the loaded result reads like the original
    # the numbers against the truth (by-hand values of the derived numbers: tests/test_result.py):
    # every input's brute-force d_m lies in [lower, upper], so their mean lies in estimate ± radius
    truth = [brute_force_dm(model, xi, 2)[0] for xi in x]  # (1, 0, 1)
    assert [(r["lower"], r["upper"]) for r in d["inputs"]] == list(zip(res.lower.tolist(), res.upper.tolist(),
                                                                       strict=True))
    assert all(r["lower"] <= dm <= r["upper"] for r, dm in zip(d["inputs"], truth, strict=True))
    g = d["global"]
    assert g["estimate"] - g["radius"] <= sum(truth) / 3 <= g["estimate"] + g["radius"]
    assert g["radius"] > 0  # some input is open: the bracket is a real interval
    # accuracy: the model's own predictions against the labels given
    pred = model(x).argmax(1)
    assert [r["predicted"] for r in d["inputs"]] == pred.tolist()
    assert g["accuracy"] == pytest.approx(float((pred == torch.tensor([0, 1, 2])).double().mean()))
    assert [r["lower_kind"] for r in d["inputs"]] == ["grid"] * 3
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "bad.pt").write_bytes(b"not a result")
    with pytest.raises(ValueError, match="path: .*not a readable l0tre result"):
        l0tre.Result.load(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="path: no result file"):
        l0tre.Result.load(tmp_path / "missing.pt")


def test_checkpoint_for_other_inputs_is_refused(tmp_path: Path) -> None:
    shape = (1, 2, 2)
    model = random_mlp(shape, 3, 2)
    ckpt = tmp_path / "c.pt"
    l0tre.evaluate(model, _inputs(shape, 2), epsilon=0.5, t_max=1, checkpoint=ckpt)
    with pytest.raises(ValueError, match="checkpoint: .*another model, inputs or options"):
        l0tre.evaluate(model, _inputs(shape, 2, seed=99), epsilon=0.5, t_max=1, checkpoint=ckpt)
    with pytest.raises(ValueError, match="checkpoint: .*another model, inputs or options"):
        l0tre.evaluate(model, _inputs(shape, 2), epsilon=0.25, t_max=1, checkpoint=ckpt)


def test_a_level_whose_work_is_all_done_when_the_budget_runs_out_is_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget runs out during the last shard's bound updates of level 1: every unit of the
    level is done, so the level counts (``t == 1``, its bounds), and level 2 is not started."""
    import time as _time

    from l0tre.engine import loop

    finish = loop.finish_shard

    def slow_finish(*args: object, **kw: object) -> int:
        spent = finish(*args, **kw)  # type: ignore[arg-type]
        _time.sleep(1.2)
        return spent

    monkeypatch.setattr(loop, "finish_shard", slow_finish)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 3)).eval()
    x = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    full = l0tre.evaluate(net, x, t_max=1, mode="eager", incremental=False)
    res = l0tre.evaluate(net, x, t_max=2, time_budget=1.0, mode="eager", incremental=False)
    assert res.stopped in ("time_budget", "converged")
    assert res.t == 1 and torch.equal(res.lower, full.lower) and torch.equal(res.upper, full.upper)
    assert len(res.level_seconds) == 1
