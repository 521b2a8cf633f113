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
    """paper-mnist, 20 real MNIST test images, t=1: every fast mode gives the plain path's bounds."""
    x = l0tre.load_data("mnist:test", data_root=shared_data, limit=20).x  # type: ignore[arg-type]
    base = None
    for mode in ("eager", "channels_last", "auto"):
        clf = l0tre.load_model("paper-mnist")
        res = l0tre.evaluate(clf, x, epsilon=0.5, t_max=1, mode=mode)
        if base is None:
            base = res
            continue
        assert torch.equal(res.lower, base.lower) and torch.equal(res.upper, base.upper)
        assert torch.equal(res.found, base.found)
