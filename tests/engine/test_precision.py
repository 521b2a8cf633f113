"""Reduced-precision evaluation with exact re-checks (``l0tre.execution.precision``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import l0tre
from l0tre.classifier import Classifier
from l0tre.execution.precision import LowPrecisionModel, Precision, Rechecked, _folded, choose_precision
from l0tre.objectives import Misclassification


def conv_bn_net(seed: int, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, classes),
    )
    # non-trivial running statistics so that folding BatchNorm is not an identity
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def rows(seed: int, n: int) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_folding_keeps_the_function_and_the_original() -> None:
    net = conv_bn_net(0)
    net.train()
    folded = _folded(net)
    assert net.training  # the caller's module keeps its mode
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    net.eval()
    x = rows(1, 32)
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-5, rtol=1e-5)
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def test_low_precision_outputs_are_close_and_float32() -> None:
    clf = Classifier(conv_bn_net(2), preprocessing={"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]})
    low = LowPrecisionModel(clf)
    x = rows(3, 13)  # not a bucket size: padded and cut back
    out = low(x)
    exact = clf(x)
    assert out.dtype == torch.float32 and out.shape == exact.shape
    scale = float(exact.abs().max())
    assert float((out - exact).abs().max()) <= 0.05 * scale
    assert bool((out != exact).any())  # it really is another precision


def test_rechecked_rows_near_the_boundary_are_exact() -> None:
    clf = Classifier(conv_bn_net(4))
    obj = Misclassification()
    x = rows(5, 64)
    ref = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(6))
    low = LowPrecisionModel(clf)
    approx = obj.from_outputs(clf, low(x), ref)
    tol = float(approx.score.abs().median())  # half the rows are re-checked
    wrapped = Rechecked(obj, low, tol=tol)
    exact = obj.evaluate(clf, x, ref)
    got = wrapped.evaluate(clf, x, ref)
    near = approx.score.abs() <= tol
    assert bool(near.any()) and bool((~near).any())
    # rows within the tolerance carry the exact values, the others the low-precision ones
    assert torch.equal(got.score[near], exact.score[near])
    assert torch.equal(got.success[near], exact.success[near])
    assert torch.equal(got.label[near], exact.label[near])
    assert torch.equal(got.score[~near], approx.score[~near])
    assert wrapped.rechecked == int(near.sum())
    # the tolerance grew to factor × the largest difference seen on the re-checked rows
    seen = float((exact.score[near].double() - approx.score[near].double()).abs().max())
    assert wrapped.max_delta == pytest.approx(seen)
    assert wrapped.tol >= max(tol, wrapped.factor * seen) - 1e-12


def test_calibration_widens_the_tolerance() -> None:
    clf = Classifier(conv_bn_net(7))
    obj = Misclassification()
    wrapped = Rechecked(obj, LowPrecisionModel(clf))
    assert wrapped.tol == 0.0
    x = rows(8, 32)
    ref = obj.reference(clf, x)
    wrapped.calibrate(clf, x, ref)
    d = (obj.evaluate(clf, x, ref).score - obj.from_outputs(clf, wrapped.low(x), ref).score).abs().max()
    assert wrapped.tol == pytest.approx(2.0 * float(d))
    assert wrapped.low_rows == 32


def test_choose_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    import l0tre.execution.precision as precision

    clf = Classifier(conv_bn_net(9))
    assert choose_precision(clf, "float32") is Precision.FULL
    assert choose_precision(clf, "bf16") is Precision.BF16
    monkeypatch.setattr(precision, "fast_bf16", lambda device: True)
    assert choose_precision(clf, "auto") is Precision.BF16
    assert choose_precision(Classifier(lambda z: z.flatten(1)[:, :3]), "auto") is Precision.FULL
    assert choose_precision(Classifier(conv_bn_net(9).double()), "auto") is Precision.FULL
    monkeypatch.setattr(precision, "fast_bf16", lambda device: False)
    assert choose_precision(clf, "auto") is Precision.FULL
    with pytest.raises(ValueError, match="precision"):
        choose_precision(clf, "half")
    with pytest.raises(ValueError, match="precision"):
        LowPrecisionModel(Classifier(lambda z: z.flatten(1)[:, :3]))


def test_attack_rejects_bad_precision() -> None:
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="precision"):
        l0tre.attack(conv_bn_net(0), x, precision="fp8")
    with pytest.raises(ValueError, match="precision"):
        l0tre.attack(lambda z: z.flatten(1)[:, :4], x, screen="exact", precision="bfloat16")


def test_rechecked_needs_the_from_outputs_capability() -> None:
    class EvaluateOnly:
        name = "evaluate-only"

        def reference(self, model: Classifier, x0: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x0.shape[0], dtype=torch.int64)

        def evaluate(self, model: Classifier, x: torch.Tensor, ref: torch.Tensor) -> object:
            raise AssertionError("not called")

    low = LowPrecisionModel(Classifier(conv_bn_net(1)))
    with pytest.raises(TypeError, match="^objective: "):
        Rechecked(EvaluateOnly(), low)  # type: ignore[arg-type]


def test_the_copy_of_a_conv_net_runs_channels_last_in_any_mode() -> None:
    net = conv_bn_net(3)
    clf = Classifier(net, input_shape=(3, 8, 8))
    assert clf.mode == "eager"
    low = LowPrecisionModel(clf)
    assert low.channels_last
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in low.module.parameters())
    x = rows(3, 6)
    torch.testing.assert_close(low(x), clf(x), atol=0.1, rtol=0.05)
    dense = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(192, 4)), input_shape=(3, 8, 8))
    assert not LowPrecisionModel(dense).channels_last
