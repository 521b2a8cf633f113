"""``l0tre.saliency`` against a brute-force loop over every pixel and grid colour."""

from __future__ import annotations

import pytest
import torch

from l0tre.apps.saliency import saliency

from .oracle import brute_force, tiny_net

LEVELS = [0.0, 0.5, 1.0]


def _inputs(seed: int, n: int, c: int, size: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, size, size, generator=g)
    x[:, :, 0, 0] = 0.5  # some pixels already on the grid (fewer valid colours)
    return x


@pytest.mark.parametrize(("seed", "channels"), [(0, 1), (9, 1), (2, 3), (5, 3)])
@pytest.mark.parametrize("fast", [False, True])
def test_margin_map_and_flips_equal_brute_force(seed: int, channels: int, fast: bool) -> None:
    net = tiny_net(seed, channels)
    x = _inputs(seed, 4, channels)
    kw = {"incremental": True} if fast else {"mode": "eager", "incremental": False}
    s = saliency(net, x, **kw)
    bf = brute_force(net, x, LEVELS)
    assert s.flips.any() and not s.flips.all(), "a useful test has pixels that flip and pixels that do not"
    assert torch.equal(s.flips, bf.flips)
    want = bf.base_margin.view(-1, 1, 1) - bf.margin
    torch.testing.assert_close(s.sensitivity, want, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(s.base_score, bf.base_margin, atol=1e-6, rtol=1e-6)
    # the proven lower bound at t = 1: 1 exactly where no single pixel flips
    assert torch.equal(s.lower, (~bf.flips.flatten(1).any(1)).long())
    assert bool((s.upper[s.lower == 0] == 0).all())


def test_best_value_reaches_the_lowest_margin() -> None:
    net = tiny_net(3, 3)
    x = _inputs(3, 2, 3)
    s = saliency(net, x, mode="eager", incremental=False)
    bf = brute_force(net, x, LEVELS)
    for i in range(2):
        j = int(s.predicted[i])
        for h in range(5):
            for w in range(5):
                xp = x[i : i + 1].clone()
                xp[0, :, h, w] = s.best_value[i, :, h, w]
                out = net(xp)[0].detach()
                m = out[j] - torch.cat([out[:j], out[j + 1:]]).max()
                assert abs(float(m) - float(bf.margin[i, h, w])) < 1e-5
    assert set(s.best_value.unique().tolist()) <= {0.0, 0.5, 1.0} | set(x.unique().tolist())


def test_confidence_map_equals_brute_force() -> None:
    net = tiny_net(4, 1)
    x = _inputs(4, 3, 1)
    s = saliency(net, x, score="confidence", mode="eager", incremental=False)
    bf = brute_force(net, x, LEVELS)
    torch.testing.assert_close(s.sensitivity, bf.base_confidence.view(-1, 1, 1) - bf.confidence, atol=2e-6, rtol=1e-5)
    assert torch.equal(s.flips, bf.flips)


def test_pixels_without_a_valid_colour_have_zero_sensitivity() -> None:
    net = tiny_net(5, 1)
    x = _inputs(5, 2, 1)
    x[:, :, 1, 1] = 0.0
    s = saliency(net, x, epsilon=1.0)  # grid {0, 1}: pixel (1, 1) can still become 1
    assert bool(torch.isfinite(s.sensitivity).all())
    s2 = saliency(net, x, baseline=0.0)  # only colour 0: pixel (1, 1) cannot change
    assert bool((s2.sensitivity[:, 1, 1] == 0).all()) and not bool(s2.flips[:, 1, 1].any())
    assert torch.equal(s2.best_value[:, :, 1, 1], x[:, :, 1, 1])


def test_one_baseline_on_images_mostly_at_the_baseline() -> None:
    """Whole work units without a valid colour (MNIST-like backgrounds at the baseline)."""
    net = tiny_net(0, 1, size=8)
    x = _inputs(0, 3, 1, size=8)
    x[:, :, :5] = 0.0
    s = saliency(net, x, baseline=0.0, batch_size=4, mode="eager", incremental=False)
    with torch.no_grad():
        out0 = net(x)
        j = out0.argmax(1)
        want = torch.zeros(3, 8, 8)
        for i in range(3):
            for h in range(5, 8):
                for w in range(8):
                    xp = x[i : i + 1].clone()
                    xp[0, :, h, w] = 0.0
                    o = net(xp)[0]
                    m0 = out0[i, j[i]] - torch.cat([out0[i, : j[i]], out0[i, j[i] + 1 :]]).max()
                    want[i, h, w] = m0 - (o[j[i]] - torch.cat([o[: j[i]], o[j[i] + 1 :]]).max())
    torch.testing.assert_close(s.sensitivity, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_batch_size_does_not_change_the_maps(batch_size: int) -> None:
    net = tiny_net(2, 3)
    x = _inputs(2, 5, 3)
    ref = saliency(net, x, mode="eager", incremental=False)
    s = saliency(net, x, batch_size=batch_size, mode="eager", incremental=False)
    torch.testing.assert_close(s.sensitivity, ref.sensitivity, atol=1e-6, rtol=1e-6)
    assert torch.equal(s.flips, ref.flips) and torch.equal(s.lower, ref.lower)
    perm = torch.tensor([3, 0, 4, 2, 1])
    shuffled = saliency(net, x[perm], batch_size=batch_size, mode="eager", incremental=False)
    torch.testing.assert_close(shuffled.sensitivity, ref.sensitivity[perm], atol=1e-6, rtol=1e-6)
    assert torch.equal(shuffled.flips, ref.flips[perm]) and torch.equal(shuffled.best_value, ref.best_value[perm])
    sub = saliency(net, x[2:4], mode="eager", incremental=False)  # other inputs in the batch
    torch.testing.assert_close(sub.sensitivity, ref.sensitivity[2:4], atol=1e-6, rtol=1e-6)
    assert torch.equal(sub.flips, ref.flips[2:4])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_maps() -> None:
    net = tiny_net(2, 3)
    x = _inputs(2, 4, 3)
    cpu = saliency(net, x, device="cpu", precision="float32")
    gpu = saliency(tiny_net(2, 3), x, device="cuda", precision="float32")
    torch.testing.assert_close(gpu.sensitivity, cpu.sensitivity, atol=1e-4, rtol=1e-4)
    assert torch.equal(gpu.flips, cpu.flips)


def test_bad_arguments_are_named() -> None:
    net = tiny_net(8, 1)
    x = _inputs(8, 1, 1)
    with pytest.raises(ValueError, match="pixels"):
        saliency(net, x, pixels="sample:0")
    with pytest.raises(ValueError, match="pixels"):
        saliency(net, x, pixels="some")
    with pytest.raises(ValueError, match="score"):
        saliency(net, x, score="logit")
    with pytest.raises(ValueError, match="baseline"):
        saliency(net, x, baseline=0.3)
    with pytest.raises(TypeError, match="baseline"):
        saliency(net, x, baseline="0")
    with pytest.raises(ValueError, match="epsilon"):
        saliency(net, x, epsilon=0.3)
    with pytest.raises(ValueError, match=r"x: the model cannot run on inputs of shape \(3, 5, 5\)"):
        saliency(net, _inputs(8, 1, 3))  # a greyscale model given RGB images


def test_the_recorded_table_agrees_with_the_engines_sensitivity_map() -> None:
    """The engine's own level-1 map (``keep_sensitivity``: lowest margins) is the same table."""
    import l0tre

    net = tiny_net(5, 3)
    x = _inputs(5, 4, 3)
    s = saliency(net, x, mode="eager", incremental=False)
    res = l0tre.evaluate(net, x, t_max=1, keep_sensitivity=True, mode="eager", incremental=False)
    assert res.sensitivity is not None
    torch.testing.assert_close(s.base_score.view(-1, 1, 1) - res.sensitivity.float(), s.sensitivity, atol=1e-6,
                               rtol=1e-6)
    assert torch.equal(s.lower, res.lower) and torch.equal(s.upper, res.upper)
