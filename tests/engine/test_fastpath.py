"""Fast paths (channels_last, auto mode, auto batch size) never change results."""

from __future__ import annotations

import pytest
import torch

import l0tre

from .oracle import brute_force_dm
from .test_oracle import check_adversarials, random_cnn


def _float32_cnn(shape: tuple[int, int, int]) -> torch.nn.Module:
    return random_cnn(shape, 4, 3).float()


@pytest.mark.parametrize(
    ("mode", "dtype", "faster", "chosen"),
    [
        ("channels_last", torch.float64, None, "channels_last"),
        ("auto", torch.float64, None, "eager"),  # auto only considers channels_last for float32 convs
        ("auto", torch.float32, "channels_last", "channels_last"),
        ("auto", torch.float32, "eager", "eager"),
    ],
)
def test_fast_modes_match_oracle(
    mode: str, dtype: torch.dtype, faster: str | None, chosen: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every mode gives the brute-force d_m exactly and eager's adversarial examples; ``auto``
    really picks (the timing is faked so that each choice is made) and the pick is the one used."""
    from l0tre.execution import modes

    # d_m = (1, 1) and (2, 3): every input needs the multi-pixel search
    shape, seed, x_seed = ((3, 2, 2), 6, 2) if dtype == torch.float64 else ((1, 3, 3), 3, 5)
    model = random_cnn(shape, 4, seed).to(dtype)
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(x_seed), dtype=dtype)
    if faster is not None:
        def fake_time(clf: l0tre.Classifier, _x: torch.Tensor, repeats: int = 2) -> float:
            return 1.0 if clf.mode == faster else 2.0

        monkeypatch.setattr(modes, "time_forward", fake_time)
    truth = torch.tensor([brute_force_dm(model, xi, 2)[0] for xi in x])
    assert bool((truth > 0).all())
    clf = l0tre.Classifier(model)
    res = l0tre.evaluate(clf, x, epsilon=0.5, t_max=int(truth.max()) + 1, mode=mode)
    assert clf.mode == chosen
    assert torch.equal(res.lower, truth) and torch.equal(res.upper, truth)
    check_adversarials(model, x, res)
    eager = l0tre.evaluate(l0tre.Classifier(random_cnn(shape, 4, seed).to(dtype)), x, epsilon=0.5,
                           t_max=int(truth.max()) + 1, mode="eager")
    assert torch.equal(res.adversarial, eager.adversarial) and torch.equal(res.found, eager.found)


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


def test_incremental_identical_on_paper_sdnn(shared_data: object) -> None:
    """paper-sdnn (a leading SubtractImage, MATLAB's zerocenter), 20 mnist14 test images, t = 1
    at ε = 0.25: the incremental chain (which now starts at the shift) gives the plain bounds."""
    x = l0tre.load_data("mnist14:test", data_root=shared_data, limit=20).x  # type: ignore[arg-type]
    clf = l0tre.load_model("paper-sdnn")
    plain = l0tre.evaluate(clf, x, epsilon=0.25, t_max=1, mode="eager", incremental=False)
    prep = l0tre.api.prepare(clf, x, epsilon=0.25, t_max=1, mode="eager", incremental=True)
    assert prep.plan.incremental is not None and prep.plan.incremental.shift is not None
    fast = list(prep.run())[-1]
    assert torch.equal(fast.lower, plain.lower) and torch.equal(fast.upper, plain.upper)
    assert torch.equal(fast.found, plain.found)


@pytest.mark.parametrize("t_max", [1, 2])
@pytest.mark.parametrize("features", ["pixel", "element"])
def test_incremental_prefix_identical_to_plain(features: str, t_max: int) -> None:
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
    plain = l0tre.evaluate(clf, x, epsilon=0.5, t_max=t_max, mode="eager", features=features)
    prep = l0tre.api.prepare(clf, x, epsilon=0.5, t_max=t_max, incremental=True, features=features)
    assert prep.plan.incremental is not None and prep.plan.incremental.depth == 3  # conv, bn, relu (then too wide)
    fast = list(prep.run())[-1]
    assert torch.equal(fast.lower, plain.lower) and torch.equal(fast.upper, plain.upper)
    assert torch.equal(fast.adversarial, plain.adversarial)
    assert fast.t == plain.t == t_max or bool((plain.lower == plain.upper).all())


@pytest.mark.parametrize("t_max", [1, 2])
def test_incremental_wide_head_identical_to_plain(t_max: int) -> None:
    """A dense head with many outputs (K = 40) after the chain: rows grouped by their windows
    through the sparse head (level 1 and 2, with and without pair tables) give the plain path's
    results."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 5, 3), torch.nn.BatchNorm2d(5),
        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(5 * 7 * 7, 40), torch.nn.ReLU(),
        torch.nn.Linear(40, 4),
    ).double()
    with torch.no_grad():
        net[3].running_mean.uniform_(-0.2, 0.2)
        net[3].running_var.uniform_(0.5, 2.0)
    net.eval()
    clf = l0tre.Classifier(net)
    x = torch.rand(5, 1, 11, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    plain = l0tre.evaluate(clf, x, epsilon=0.5, t_max=t_max, mode="eager")
    counts = []
    for pairs in (True, False):
        prep = l0tre.api.prepare(clf, x, epsilon=0.5, t_max=t_max, incremental=True)
        prep.plan.use_pairs = pairs
        caches = prep.plan.incremental.base(x) if prep.plan.incremental is not None else None
        assert caches is not None and caches.head is not None and not caches.head.cheap
        fast = list(prep.run())[-1]
        assert torch.equal(fast.lower, plain.lower) and torch.equal(fast.upper, plain.upper)
        assert torch.equal(fast.adversarial, plain.adversarial)
        counts.append(fast.evaluations)
    assert counts[0] == counts[1]


def test_incremental_outputs_match_full_forward(shared_data: object) -> None:
    from l0tre.execution.incremental import IncrementalPrefix

    clf = l0tre.load_model("paper-mnist")
    x = l0tre.load_data("mnist:test", data_root=shared_data, limit=4).x  # type: ignore[arg-type]
    inc = IncrementalPrefix.build(clf, (1, 28, 28))
    # conv, relu, conv, relu, maxpool, conv, relu, conv (window 7x7 of 8x8), relu; the second
    # max-pool's window (4x4 of 4x4) is too wide
    assert inc is not None and inc.depth == 9 and len(inc.spatial) == 5
    # two windows per row (t = 2) cover 2·49 > 0.8·64 there: that chain stops before the last conv
    inc2 = IncrementalPrefix.build(clf, (1, 28, 28), windows=2)
    assert inc2 is not None and inc2.depth == 7 and len(inc2.spatial) == 4
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (64,), generator=gen)
    pix = torch.cat([torch.tensor([0, 27, 756, 783]), torch.randint(0, 784, (60,), generator=gen)])
    vals = torch.rand(64, 1, generator=gen)
    xb = x[a].clone()
    xb.view(64, -1)[torch.arange(64), pix] = vals[:, 0]
    for chunk in (0, 7, 13):  # 13: the last call (12 rows) is padded to 16 and cut back
        inc.chunk = chunk
        torch.testing.assert_close(inc.outputs(inc.base(x), a, pix, vals), clf(xb), rtol=1e-5, atol=1e-5)


def _spatial_net(seed: int, channels: int, layers: list[tuple[str, int, int, int]]) -> torch.nn.Sequential:
    """A random CNN from (kind, kernel, stride, padding) specs, float64, with a linear head."""
    torch.manual_seed(seed)
    mods: list[torch.nn.Module] = []
    c = channels
    for kind, k, s, p in layers:
        if kind == "conv":
            mods += [torch.nn.Conv2d(c, 4, k, stride=s, padding=p), torch.nn.ReLU()]
            c = 4
        elif kind == "bn":
            bn = torch.nn.BatchNorm2d(c)
            with torch.no_grad():
                bn.running_mean.uniform_(-0.3, 0.3)
                bn.running_var.uniform_(0.5, 2.0)
                bn.bias.uniform_(-0.5, 0.5)
            mods.append(bn)
        elif kind == "max":
            mods.append(torch.nn.MaxPool2d(k, s))
        else:
            mods.append(torch.nn.AvgPool2d(k, s))
    mods += [torch.nn.Flatten(), torch.nn.LazyLinear(3)]
    return torch.nn.Sequential(*mods).double()


def _shifted(net: torch.nn.Sequential, shape: tuple[int, int, int]) -> torch.nn.Sequential:
    """``net`` behind a :class:`~l0tre.models.zoo.SubtractImage` with a random image (float64)."""
    from l0tre.models.zoo import SubtractImage

    sub = SubtractImage(shape).double()
    with torch.no_grad():
        sub.average.uniform_(0.0, 1.0, generator=torch.Generator().manual_seed(7))
    return torch.nn.Sequential(sub, *net)


@pytest.mark.parametrize(
    ("layers", "shape"),
    [
        ([("conv", 3, 1, 0), ("conv", 3, 1, 0), ("max", 2, 2, 0), ("conv", 3, 1, 0)], (1, 16, 16)),
        ([("conv", 3, 1, 1), ("bn", 0, 0, 0), ("conv", 5, 2, 2), ("avg", 2, 2, 0), ("conv", 3, 1, 1)], (3, 19, 23)),
        ([("conv", 4, 3, 1), ("max", 3, 2, 0), ("conv", 2, 1, 0)], (2, 30, 27)),
        ([("bn", 0, 0, 0), ("conv", 5, 1, 2), ("max", 3, 3, 0)], (1, 12, 12)),
    ],
)
@pytest.mark.parametrize("features", ["pixel", "element"])
@pytest.mark.parametrize("shifted", [False, True])
def test_incremental_windows_match_full_forward(
    layers: list[tuple[str, int, int, int]], shape: tuple[int, int, int], features: str, shifted: bool,
) -> None:
    """Every pixel of the image (borders included) and random values: the windowed chain
    (strides, padding, pooling, BatchNorm, normalisation, a leading per-pixel SubtractImage)
    equals the plain forward pass. Also for 2 and 3 changed features per row, neighbours
    (overlapping windows) included."""
    from l0tre.execution.incremental import IncrementalPrefix

    net = _spatial_net(len(layers), shape[0], layers)
    c, h, w = shape
    net(torch.zeros(1, *shape, dtype=torch.float64))  # materialise the lazy head
    if shifted:
        net = _shifted(net, shape)
    net.eval()
    pre = {"mean": [0.3] * c, "std": [0.7] * c}
    clf = l0tre.Classifier(net, preprocessing=pre)
    inc = IncrementalPrefix.build(clf, shape)
    assert inc is not None and len(inc.spatial) >= 1
    assert (inc.shift is not None) == shifted
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, *shape, generator=gen, dtype=torch.float64)
    rows = 3 * h * w
    a = torch.arange(3).repeat_interleave(h * w)
    pix = torch.arange(h * w).repeat(3)
    xb = x[a].clone()
    if features == "pixel":
        vals = torch.rand(rows, c, generator=gen, dtype=torch.float64)
        xb.view(rows, c, -1)[torch.arange(rows), :, pix] = vals
        got = inc.outputs(inc.base(x), a, pix, vals)
    else:
        ch = torch.randint(0, c, (rows,), generator=gen)
        vals = torch.rand(rows, 1, generator=gen, dtype=torch.float64)
        xb.view(rows, c, -1)[torch.arange(rows), ch, pix] = vals[:, 0]
        got = inc.outputs(inc.base(x), a, pix, vals, channel=ch)
    torch.testing.assert_close(got, clf(xb), rtol=1e-10, atol=1e-10)
    for t in (2, 3):
        pix_t = torch.stack([pix, (pix + 1) % (h * w), (pix + w + 3) % (h * w)], dim=1)[:, :t]
        xt = x[a].clone()
        if features == "pixel":
            vt = torch.rand(rows, t, c, generator=gen, dtype=torch.float64)
            for j in range(t):
                xt.view(rows, c, -1)[torch.arange(rows), :, pix_t[:, j]] = vt[:, j]
            got = inc.outputs(inc.base(x), a, pix_t, vt)
        else:  # the second feature shares the first one's pixel when c > 1
            ch_t = torch.stack([ch, (ch + 1) % c, ch], dim=1)[:, :t]
            pix_e = pix_t.clone()
            pix_e[:, 1] = pix if c > 1 else pix_t[:, 1]
            vt = torch.rand(rows, t, 1, generator=gen, dtype=torch.float64)
            for j in range(t):
                xt.view(rows, c, -1)[torch.arange(rows), ch_t[:, j], pix_e[:, j]] = vt[:, j, 0]
            got = inc.outputs(inc.base(x), a, pix_e, vt, channel=ch_t)
        torch.testing.assert_close(got, clf(xt), rtol=1e-10, atol=1e-10)


def test_tuning_cache_skips_measurements_on_the_second_run(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first run measures and stores its choices; a second run with a fresh classifier of
    the same weights reads them (no measurement) and gives identical bounds; a corrupt file is
    ignored; ``L0TRE_TUNING_CACHE=off`` writes nothing."""
    import json
    from pathlib import Path

    from l0tre.execution import modes as fastpath

    root = Path(str(tmp_path))
    monkeypatch.setenv("L0TRE_TUNING_CACHE", "on")
    monkeypatch.setenv("L0TRE_CACHE_DIR", str(root))
    shape = (1, 8, 8)
    net = _float32_cnn(shape).eval()
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(3))
    first = l0tre.evaluate(l0tre.Classifier(net), x, epsilon=0.5, t_max=2)
    stored = json.loads((root / "tuning.json").read_text())
    assert any('"tune"' in k for k in stored) and any('"incremental"' in k for k in stored)

    def no_measuring(*_a: object, **_k: object) -> float:
        raise AssertionError("measured although the cache holds the answer")

    with monkeypatch.context() as m:
        m.setattr(fastpath, "time_forward", no_measuring)
        m.setattr(fastpath, "_seconds", no_measuring)
        second = l0tre.evaluate(l0tre.Classifier(net), x, epsilon=0.5, t_max=2)
    assert torch.equal(second.lower, first.lower) and torch.equal(second.upper, first.upper)
    assert torch.equal(second.adversarial, first.adversarial)

    (root / "tuning.json").write_text("{not json")
    again = l0tre.evaluate(l0tre.Classifier(net), x, epsilon=0.5, t_max=2)
    assert torch.equal(again.upper, first.upper)
    assert json.loads((root / "tuning.json").read_text())  # rewritten

    off = root / "off"
    monkeypatch.setenv("L0TRE_CACHE_DIR", str(off))
    monkeypatch.setenv("L0TRE_TUNING_CACHE", "off")
    l0tre.evaluate(l0tre.Classifier(net), x, epsilon=0.5, t_max=2)
    assert not off.exists()


def test_tuning_runs_after_the_first_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first snapshot does not wait for execution-mode / batch-size measuring; the run then
    uses the measured batch size."""
    calls: list[int] = []
    orig = l0tre.api.tune

    def tune(*a: object, **k: object) -> tuple[str, int]:
        calls.append(1)
        used, _ = orig(*a, **k)  # type: ignore[arg-type]
        return used, 7

    monkeypatch.setattr(l0tre.api, "tune", tune)
    shape = (3, 4, 4)
    clf = l0tre.Classifier(_float32_cnn(shape))
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(3))
    engine = l0tre.api.prepare(clf, x, epsilon=0.5, t_max=1)
    it = engine.run()
    first = next(it)
    assert calls == [] and first.t == 0 and bool((first.lower == 0).all())
    last = list(it)[-1]
    assert calls == [1] and last.t == 1 and engine.batch_size == 7
    plain = l0tre.evaluate(l0tre.Classifier(_float32_cnn(shape)), x, epsilon=0.5, t_max=1, mode="eager")
    assert torch.equal(last.lower, plain.lower) and torch.equal(last.upper, plain.upper)
