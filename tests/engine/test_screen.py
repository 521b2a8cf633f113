"""Low-precision screening through the incremental chain: :meth:`Rechecked.screen` (probe rows
spread over each call widen the tolerance before any other row is trusted),
:meth:`LowPrecisionModel.chain`, and the plan's rows per call and tuning around a chain."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import l0tre
from l0tre.execution.graph_chain import MIN_CHUNK, GraphPrefix, build_chain
from l0tre.execution.incremental import IncrementalPrefix
from l0tre.execution.plan import ExecutionPlan
from l0tre.execution.precision import LowPrecisionModel, Rechecked
from l0tre.objectives import Misclassification, ObjectiveValues

from .test_graph_chain import _prepared, _resnet


def _values(scores: torch.Tensor) -> ObjectiveValues:
    return ObjectiveValues(score=scores, confidence=scores, success=scores < 0, label=torch.zeros_like(scores).long())


class _Margins:
    """An objective whose raw outputs are the scores themselves (column 0)."""

    name = "margins"

    def reference(self, model: object, x0: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x0.shape[0], dtype=torch.long)

    def evaluate(self, model: object, x: torch.Tensor, ref: torch.Tensor) -> ObjectiveValues:
        raise AssertionError("not used")

    def from_outputs(self, model: object, raw: torch.Tensor, ref: torch.Tensor) -> ObjectiveValues:
        return _values(raw[:, 0].clone())


def _screen(every: int, lie: float, true: torch.Tensor) -> tuple[Rechecked, ObjectiveValues, list[torch.Tensor]]:
    clf = l0tre.Classifier(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval(), input_shape=(1, 2, 2))
    r = Rechecked(_Margins(), LowPrecisionModel(clf), probe_every=every)  # type: ignore[arg-type]
    asked: list[torch.Tensor] = []

    def exact(idx: torch.Tensor) -> ObjectiveValues:
        asked.append(idx.clone())
        return _values(true[idx])

    out = r.screen(clf, (true + lie).unsqueeze(1), torch.zeros_like(true).long(), exact)
    return r, out, asked


def test_probe_rows_are_spread_and_widen_the_tolerance_before_the_others() -> None:
    """A copy that is off by 0.5 everywhere: the probe sees it, so every row whose screened score
    lies within 2 × 0.5 of the boundary is recomputed, and each sign is right."""
    true = torch.linspace(-3, 3, 41)
    r, out, asked = _screen(every=11, lie=0.5, true=true)
    probe = asked[0]
    assert probe.tolist() == [0, 13, 27, 40]  # ceil(41 / 11) rows: first, last and evenly between
    assert r.tol == pytest.approx(1.0) and r.max_delta == pytest.approx(0.5)
    assert torch.equal(out.success, true < 0)
    near = (true + 0.5).abs() <= 1.0
    assert torch.equal(out.score[near], true[near])
    assert r.rechecked == 4 + int((near & ~torch.isin(torch.arange(41), probe)).sum())
    assert r.low_rows == 41


def test_without_a_probe_an_unseen_error_is_trusted() -> None:
    """The counterpart: with no probe and no calibration nothing widens the tolerance, and a
    lying copy flips the rows it lies about (so the probe above is what protects them)."""
    true = torch.linspace(-3, 3, 41)
    r, out, asked = _screen(every=0, lie=0.5, true=true)
    assert r.rechecked == 0 and not asked
    assert not torch.equal(out.success, true < 0)


@pytest.mark.parametrize("every", [-1, True, 1.5])
def test_probe_every_must_be_a_non_negative_int(every: object) -> None:
    clf = l0tre.Classifier(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval(), input_shape=(1, 2, 2))
    with pytest.raises(ValueError, match="probe_every"):
        Rechecked(Misclassification(), LowPrecisionModel(clf), probe_every=every)  # type: ignore[arg-type]


def test_a_small_call_probes_one_row() -> None:
    true = torch.linspace(-3, 3, 5)
    r, _, asked = _screen(every=64, lie=0.0, true=true)
    assert asked[0].tolist() == [0] and r.rechecked >= 1


def _residual(size: int = 32) -> tuple[l0tre.Classifier, tuple[int, int, int]]:
    net = _prepared(_resnet(False)).float()
    shape = (3, size, size)
    return l0tre.Classifier(net, device="cpu", input_shape=shape,
                            preprocessing={"mean": [0.4, 0.5, 0.45], "std": [0.2, 0.25, 0.3]}), shape


def test_the_copy_has_a_chain_of_its_own_in_its_dtype() -> None:
    clf, shape = _residual()
    low = LowPrecisionModel(clf)
    chain = low.chain(shape)
    assert isinstance(chain, GraphPrefix) and chain.model is not None and chain.model.dtype == torch.bfloat16
    assert low.chain(shape) is chain  # built once
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, *shape, generator=gen)
    a = torch.tensor([0, 1, 1, 0])
    pix = torch.tensor([[0], [17], [shape[1] * shape[2] - 1], [200]])
    vals = torch.rand(4, 1, 3, generator=gen)
    x = x0[a].clone()
    x.view(4, 3, -1)[torch.arange(4), :, pix[:, 0]] = vals[:, 0]
    out = chain.outputs(chain.base(x0), a, pix, vals)
    assert out.dtype == torch.bfloat16
    exact = clf(x)
    torch.testing.assert_close(out.float(), low(x), atol=0.05, rtol=0.05)  # bfloat16 both ways
    torch.testing.assert_close(out.float(), exact, atol=0.05, rtol=0.05)


def test_a_chain_that_bounds_its_chunks_is_not_held_to_the_forward_pass_memory() -> None:
    clf, shape = _residual(64)
    kw = {"pixel_features": True, "batch_size": 64, "user_batch": None, "max_memory": 1 << 20}
    graph = ExecutionPlan(clf, shape, incremental=True, **kw)  # type: ignore[arg-type]
    assert isinstance(graph.incremental, GraphPrefix) and graph.incremental.bounded_chunks
    assert graph.inc_batch == 512
    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 62 * 62, 3)).eval()
    flat = ExecutionPlan(l0tre.Classifier(seq, input_shape=(1, 64, 64)), (1, 64, 64), incremental=True,
                         **kw)  # type: ignore[arg-type]
    assert type(flat.incremental) is IncrementalPrefix and not flat.incremental.bounded_chunks
    assert flat.inc_batch < 512  # 1 MiB holds fewer rows of the plain forward pass


def test_graph_chunks_are_whole_multiples_of_32() -> None:
    clf, shape = _residual(64)
    chain = build_chain(clf, shape)
    assert isinstance(chain, GraphPrefix)
    caches = chain.base(torch.rand(1, *shape))
    rows = chain.max_chunk(caches)
    assert rows >= MIN_CHUNK and (rows < 32 or rows % 32 == 0)


def test_a_t1_run_whose_rows_the_chain_takes_does_not_tune_the_forward_pass() -> None:
    clf, shape = _residual()
    calls: list[int] = []

    def tuner() -> int:
        calls.append(1)
        return 64

    kw = {"pixel_features": True, "batch_size": 64, "user_batch": None, "max_memory": 1 << 28,
          "tuner": tuner}
    x0 = torch.rand(1, *shape)
    chained = ExecutionPlan(clf, shape, incremental=True, force_incremental=True, work_rows=10_000,
                            **kw)  # type: ignore[arg-type]
    chained.ensure_tuned(x0)
    assert not calls
    unknown = ExecutionPlan(clf, shape, incremental=True, force_incremental=True, **kw)  # type: ignore[arg-type]
    unknown.ensure_tuned(x0)  # t > 1 runs: the plain forward pass carries levels the chain does not
    plain = ExecutionPlan(clf, shape, incremental=False, work_rows=10_000, **kw)  # type: ignore[arg-type]
    plain.ensure_tuned(x0)
    assert len(calls) == 2


class _Liar(LowPrecisionModel):
    """A copy of a two-class model that names the other class, by a wide margin (far from the
    boundary: never re-checked without a probe)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = super().__call__(x)
        first = (out[:, 0] >= out[:, 1]).unsqueeze(1)
        return torch.where(first, torch.tensor([-10.0, 10.0]), torch.tensor([10.0, -10.0]))


def test_a_bound_moves_only_on_a_float32_check() -> None:
    """``accept`` re-checks candidates with the exact objective, not the screen: a lying copy with
    no probe cannot move an upper bound."""
    from l0tre.api import prepare
    from l0tre.engine.update import accept

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    clf = l0tre.Classifier(net, input_shape=(3, 8, 8))
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = clf(x).argmax(1)
    liar = Rechecked(Misclassification(), _Liar(clf))
    engine = prepare(clf, x, t_max=1, objective=liar)
    assert bool(liar.evaluate(clf, x, ref).success.all())  # the screen alone would accept them all
    before = engine.result.upper.clone()
    cand = x.clone()
    cand[:, :, 0, 0] = 1.0 - cand[:, :, 0, 0]  # one changed pixel
    real = clf(cand).argmax(1) != ref
    accept(engine.problem, engine.result, torch.arange(4), cand, batch_size=8)
    assert torch.equal(engine.result.upper[~real], before[~real])
    assert torch.equal(engine.result.found, real)


def _conv(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(6 * 4 * 4, 4)).eval()
    with torch.no_grad():
        net[-1].weight.mul_(20.0)  # margins of a few units
    return net


class _Shifted(LowPrecisionModel):
    """A bfloat16 copy that lies: class 0's logit raised by 3 on every row."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = super().__call__(x).clone()
        out[:, 0] += 3.0
        return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("lying", [False, True])
def test_evaluate_in_bfloat16_gives_the_float32_bounds(monkeypatch: pytest.MonkeyPatch, seed: int,
                                                       lying: bool) -> None:
    net = _conv(seed)
    x = torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    ref = l0tre.evaluate(net, x, t_max=2, precision="float32")
    if lying:
        from l0tre.execution import precision

        monkeypatch.setattr(precision, "LowPrecisionModel", _Shifted)
    res = l0tre.evaluate(net, x, t_max=2, precision="bfloat16")
    assert ref.precision == "float32" and res.precision == "bfloat16" and res.to_dict()["precision"] == "bfloat16"
    assert torch.equal(res.lower, ref.lower)  # the grid claim is the float32 model's
    # the upper bound is an example the search found, re-checked in float32 (bfloat16 values may
    # rank subsets differently and lead the search elsewhere)
    found = res.found
    assert bool((net(res.adversarial[found]).argmax(1) != res.predicted[found]).all())
    changed = (res.adversarial != x).any(dim=1).flatten(1).sum(1)
    assert torch.equal(changed[found] - 1, res.upper[found]) and bool((res.lower <= res.upper).all())


def test_auto_precision_is_float32_on_a_cpu_and_bfloat16_needs_raw_scores() -> None:
    net = _conv(0)
    x = torch.rand(1, 3, 6, 6)
    assert l0tre.evaluate(net, x, t_max=1).precision == "float32"

    class _Opaque:  # an objective without from_outputs
        name = "opaque"

        def reference(self, model: l0tre.Classifier, x0: torch.Tensor) -> torch.Tensor:
            return model(x0).argmax(1)

        def evaluate(self, model: l0tre.Classifier, x: torch.Tensor, ref: torch.Tensor) -> ObjectiveValues:
            return Misclassification().evaluate(model, x, ref)

    with pytest.raises(ValueError, match="precision: bfloat16 screening needs an objective with from_outputs"):
        l0tre.evaluate(net, x, t_max=1, precision="bfloat16", objective=_Opaque())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="precision"):
        l0tre.evaluate(net, x, t_max=1, precision="half")


@pytest.mark.parametrize("decisive", [True, False])
def test_a_decisive_quick_check_skips_the_full_measurement(monkeypatch: pytest.MonkeyPatch,
                                                           decisive: bool) -> None:
    """A chain that sizes its own calls and is decisively faster on 16 rows is used without the
    full measurement (chunk 0: its own sizes); otherwise the full measurement runs."""
    from l0tre.execution import modes

    monkeypatch.setenv("L0TRE_TUNING_CACHE", "off")
    clf, shape = _residual()
    chain = build_chain(clf, shape)
    assert isinstance(chain, GraphPrefix) and chain.bounded_chunks
    monkeypatch.setattr(modes, "_decisive", lambda *args: decisive)
    rows: list[int] = []
    forward = clf._forward

    def counting(x: torch.Tensor) -> torch.Tensor:
        rows.append(int(x.shape[0]))
        return forward(x)

    clf._forward = counting  # type: ignore[method-assign]
    chain.chunk = 64
    pays = modes.incremental_pays(clf, chain, torch.rand(2, *shape), rows=200)
    if decisive:
        assert pays and chain.chunk == 0
        assert max(rows) <= modes.QUICK_ROWS  # only the warm-up of the quick check
    else:
        assert max(rows) > modes.QUICK_ROWS  # the full measurement's calls of 200 rows (padded)
