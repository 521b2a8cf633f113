"""Public API behaviour: inputs, classifiers, validation, result types."""

from __future__ import annotations

import pytest
import torch
from _certify_helpers import Normalised, conv_net, mlp

from l0tre.certify import (
    CertifyResult,
    Status,
    UnsupportedLayerError,
    bound_model,
    certify_boxes,
    certify_subsets,
    subset_boxes,
)
from l0tre.classifier import Classifier


def test_subset_boxes_pixel_and_element() -> None:
    x0 = torch.rand(2, 3, 3, dtype=torch.float64)
    lo, hi = subset_boxes(x0, torch.tensor([[4, -1], [0, 8]]), bounds=(0.0, 1.0))
    assert lo.shape == (2, 2, 3, 3)
    free = hi > lo
    assert free[0].flatten(1).any(0).nonzero().flatten().tolist() == [4]
    assert bool(free[0, :, 1, 1].all())  # all channels of the pixel
    assert free[1].flatten(1).any(0).nonzero().flatten().tolist() == [0, 8]
    assert torch.equal(lo[~free], x0.expand(2, -1, -1, -1)[~free])
    lo_e, hi_e = subset_boxes(x0, torch.tensor([[9, 17]]), features="element", bounds=(-1.0, 2.0))
    assert (hi_e > lo_e).flatten().nonzero().flatten().tolist() == [9, 17]
    assert float(lo_e.flatten()[9]) == -1.0 and float(hi_e.flatten()[17]) == 2.0


@pytest.mark.parametrize(
    "subsets",
    [torch.tensor([[9]]), torch.tensor([1, 2]), torch.tensor([[0.5]])],
)
def test_bad_subsets_raise(subsets: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        subset_boxes(torch.rand(1, 3, 3), subsets)


def test_bad_arguments_raise() -> None:
    model = mlp(0)
    x0 = torch.rand(1, 3, 3)
    subs = torch.tensor([[0]])
    with pytest.raises(ValueError):
        certify_subsets(model, x0, 0, subs, features="channel")
    with pytest.raises(ValueError):
        certify_subsets(model, x0, 7, subs)
    with pytest.raises(ValueError):
        certify_subsets(model, x0.view(1, 9), 0, subs)
    with pytest.raises(ValueError):
        certify_subsets(model, x0, 0, subs, method="magic")
    with pytest.raises(ValueError):
        certify_subsets(model, x0, 0, subs, batch_size=0)


def test_classifier_supplies_preprocessing_and_bounds() -> None:
    inner = conv_net(4)
    mean, std = (0.3,), (0.2,)
    clf = Classifier(inner, bounds=(0.0, 2.0), preprocessing={"mean": mean, "std": std})
    x0 = torch.rand(1, 4, 4)
    label = int(clf.predict(x0.unsqueeze(0))[0])
    subs = torch.tensor([[0, 5], [3, -1], [15, 10]])
    r1 = certify_subsets(clf, x0, label, subs)
    r2 = certify_subsets(inner, x0, label, subs, bounds=(0.0, 2.0), preprocessing=(mean, std))
    r3 = certify_subsets(Normalised(inner, [0.3], [0.2]).eval(), x0, label, subs,
                         bounds=(0.0, 2.0))
    assert isinstance(r1, CertifyResult)
    assert torch.allclose(r1.margin_lb, r2.margin_lb) and torch.allclose(r1.margin_lb,
                                                                        r3.margin_lb, atol=1e-6)
    assert r1.margin_lb.shape == (3, 3) and r1.proven.dtype == torch.bool
    assert torch.isinf(r1.margin_lb[:, label]).all()
    assert all(s in (Status.PROVEN, Status.UNKNOWN) for s in r1.status)
    assert r1.n_proven == int(r1.proven.sum())


def test_certify_boxes_matches_subsets() -> None:
    model = mlp(2)
    x0 = torch.rand(1, 3, 3)
    subs = torch.tensor([[1, 2], [4, 8]])
    lo, hi = subset_boxes(x0.double(), subs)
    a = certify_subsets(model, x0, 1, subs)
    b = certify_boxes(model, lo, hi, torch.tensor([1, 1]))
    assert torch.allclose(a.margin_lb, b.margin_lb)
    assert torch.equal(a.proven, b.proven)


def test_margin_tol_controls_proven() -> None:
    model = mlp(5)
    x0 = torch.rand(1, 3, 3)
    label = int(model(x0.unsqueeze(0)).argmax())
    lo = x0.unsqueeze(0).double()
    res = certify_boxes(model, lo, lo, label, margin_tol=0.0)
    assert bool(res.proven[0])  # a point box of a correctly classified input
    gap = float(res.margin_lb[0].min())
    assert not bool(certify_boxes(model, lo, lo, label, margin_tol=gap + 1.0).proven[0])


def test_bound_model_spec_and_float32() -> None:
    model = conv_net(1)
    lo = torch.rand(3, 1, 4, 4) * 0.5
    hi = lo + 0.2
    spec = torch.tensor([[1.0, -1.0, 0.0], [0.0, 2.0, 1.0]])
    lb, ub = bound_model(model, lo, hi, spec=spec)
    lb32, ub32 = bound_model(model, lo, hi, spec=spec, dtype=torch.float32)
    assert lb.shape == (3, 2) and lb32.dtype == torch.float32
    assert torch.allclose(lb.float(), lb32, atol=1e-4)
    x = lo + (hi - lo) * torch.rand(100, *lo.shape)
    with torch.no_grad():
        z = model(x.flatten(0, 1)).double().view(100, 3, 3)
    vals = z @ spec.double().T
    assert bool((lb <= vals.min(0).values + 1e-9).all() and (ub >= vals.max(0).values - 1e-9).all())


def test_non_classifier_output_rejected() -> None:
    class Spatial(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x)

    with pytest.raises(ValueError):
        certify_subsets(Spatial(), torch.rand(1, 2, 2), 0, torch.tensor([[0]]))
    with pytest.raises(UnsupportedLayerError):
        certify_subsets(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2),
                                            torch.nn.GELU()), torch.rand(1, 2, 2), 0,
                        torch.tensor([[0]]))
