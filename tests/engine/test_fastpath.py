"""Fast paths (channels_last, auto mode, auto batch size) never change results."""

from __future__ import annotations

import pytest
import torch

import l0tre

from .test_oracle import check_against_oracle, random_cnn


def _float32_cnn(shape: tuple[int, int, int]) -> torch.nn.Module:
    return random_cnn(shape, 4, 3).float()


@pytest.mark.parametrize("mode", ["channels_last", "auto"])
def test_fast_modes_match_oracle(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    shape = (3, 2, 2)
    model = random_cnn(shape, 4, 3)
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    orig = l0tre.api.prepare

    def prepare_with_mode(*a: object, **k: object) -> object:
        k["mode"] = mode
        return orig(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(l0tre.api, "prepare", prepare_with_mode)
    check_against_oracle(model, x, 0.5)


def test_fast_modes_identical_to_plain_on_float32_cnn() -> None:
    shape = (3, 5, 5)
    x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(1))
    results = {}
    for mode in ("eager", "channels_last", "auto"):
        clf = l0tre.Classifier(_float32_cnn(shape))
        results[mode] = l0tre.evaluate(clf, x, epsilon=0.5, t_max=2, mode=mode)
        assert clf.mode in ("eager", "channels_last")
    for mode in ("channels_last", "auto"):
        assert torch.equal(results[mode].lower, results["eager"].lower)
        assert torch.equal(results[mode].upper, results["eager"].upper)
        assert torch.equal(results[mode].adversarial, results["eager"].adversarial)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match=r"mode: expected one of 'auto', 'eager'.*got 'fast'"):
        l0tre.evaluate(_float32_cnn((1, 3, 3)), torch.rand(1, 1, 3, 3), mode="fast")


def test_fast_path_identical_on_20_mnist_images(shared_data: object) -> None:
    """paper-mnist, 20 real MNIST test images, t=1: the fast paths (channels_last + the incremental
    prefix, forced on) give the plain path's bounds."""
    x = l0tre.load_data("mnist:test", data_root=shared_data, limit=20).x  # type: ignore[arg-type]
    base = None
    for mode, inc in (("eager", False), ("channels_last", True)):
        clf = l0tre.load_model("paper-mnist")
        res = l0tre.evaluate(clf, x, epsilon=0.5, t_max=1, mode=mode, incremental=inc)
        if base is None:
            base = res
            continue
        assert torch.equal(res.lower, base.lower) and torch.equal(res.upper, base.upper)
        assert torch.equal(res.found, base.found)


@pytest.mark.parametrize("features", ["pixel", "element"])
def test_incremental_prefix_identical_to_plain(features: str) -> None:
    """The incremental t=1 path (forced) gives exactly the plain path's results, incl. padding,
    BatchNorm and normalisation inside the classifier."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 8, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(8 * 2 * 2, 5),
    ).double()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 2.0)
    net.eval()
    clf = l0tre.Classifier(net, preprocessing={"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]})
    x = torch.rand(6, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    plain = l0tre.evaluate(clf, x, epsilon=0.5, t_max=1, mode="eager", features=features)
    prep = l0tre.api.prepare(clf, x, epsilon=0.5, t_max=1, incremental=True, features=features)
    assert prep.incremental is not None and prep.incremental.grow == 4
    fast = list(prep.run())[-1]
    assert torch.equal(fast.lower, plain.lower) and torch.equal(fast.upper, plain.upper)
    assert torch.equal(fast.adversarial, plain.adversarial)


def test_incremental_outputs_match_full_forward(shared_data: object) -> None:
    from l0tre.engine.incremental import IncrementalPrefix

    clf = l0tre.load_model("paper-mnist")
    x = l0tre.load_data("mnist:test", data_root=shared_data, limit=4).x  # type: ignore[arg-type]
    inc = IncrementalPrefix.build(clf, (1, 28, 28))
    assert inc is not None and inc.grow == 4 and len(inc.prefix) == 4
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (64,), generator=gen)
    pix = torch.cat([torch.tensor([0, 27, 756, 783]), torch.randint(0, 784, (60,), generator=gen)])
    vals = torch.rand(64, 1, generator=gen)
    xb = x[a].clone()
    xb.view(64, -1)[torch.arange(64), pix] = vals[:, 0]
    torch.testing.assert_close(inc.outputs(inc.base(x), a, pix, vals), clf(xb), rtol=1e-5, atol=1e-5)
