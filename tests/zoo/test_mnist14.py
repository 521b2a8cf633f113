"""MNIST at 14x14 as MATLAB's imresize makes it, checked against three independent references:
a per-pixel loop over the kernel written here from MATLAB's documented algorithm, Pillow's
antialiased bicubic (same kernel, a = -0.5, widened by the scale), and the paper's own
MATLAB-made 14x14 test image."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from l0tre.data import load_data
from l0tre.readers.resize import imresize


def _keys(x: float) -> float:
    a = abs(x)
    if a <= 1:
        return 1.5 * a**3 - 2.5 * a**2 + 1
    if a <= 2:
        return -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2
    return 0.0


def _reference_1d(v: np.ndarray, n_out: int) -> np.ndarray:
    """One row resized, pixel by pixel: every input position within the (widened) kernel, borders
    mirrored (MATLAB's symmetric padding: index -1 is index 0, index n is index n-1)."""
    n = len(v)
    s = n_out / n
    shrink = s < 1
    out = np.zeros(n_out)
    for i in range(n_out):
        u = (i + 1) / s + 0.5 * (1 - 1 / s) - 1  # 0-based input position of output pixel i
        half = 2 / s if shrink else 2
        total, acc = 0.0, 0.0
        for k in range(math.floor(u - half) - 1, math.ceil(u + half) + 2):
            w = s * _keys(s * (u - k)) if shrink else _keys(u - k)
            j = k
            while j < 0 or j >= n:  # mirror until inside
                j = -j - 1 if j < 0 else 2 * n - j - 1
            total += w
            acc += w * v[j]
        out[i] = acc / total
    return out


def _reference(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows = np.stack([_reference_1d(img[:, c], size[0]) for c in range(img.shape[1])], axis=1)
    return np.stack([_reference_1d(rows[r], size[1]) for r in range(size[0])])


@settings(max_examples=25, deadline=None)
@given(img=arrays(np.float64, st.tuples(st.integers(4, 30), st.integers(4, 30)),
                  elements=st.floats(0, 1)),
       out=st.tuples(st.integers(2, 20), st.integers(2, 20)))
def test_matches_a_pixel_loop(img: np.ndarray, out: tuple[int, int]) -> None:
    """Shrinking and enlarging, any sizes: the matrix form equals the loop to rounding (float64)."""
    np.testing.assert_allclose(imresize(img, out), _reference(img, out), rtol=0, atol=1e-12)


def test_constant_image_stays_constant() -> None:
    got = imresize(np.full((3, 28, 28), 0.7), (14, 14))
    np.testing.assert_allclose(got, 0.7, rtol=0, atol=1e-14)


def test_matches_pillow_antialiased_bicubic(shared_data: Path) -> None:
    """Pillow's BICUBIC reduce uses the same kernel (a = -0.5, support x scale) and pixel centres;
    it cuts the kernel at the border instead of mirroring, so the outer output ring (whose kernel
    reaches past the border) is left out. Pillow's "F" images hold float32: 1e-6 covers a few
    float32 roundings of values <= 1 (eps 6e-8)."""
    image_mod = pytest.importorskip("PIL.Image")
    x = load_data("mnist:test", data_root=shared_data, limit=64).x[:, 0].double().numpy()
    ours = imresize(x, (14, 14))
    pil = np.stack([np.asarray(image_mod.fromarray(im.astype(np.float32), mode="F").resize(
        (14, 14), image_mod.Resampling.BICUBIC)) for im in x])
    np.testing.assert_allclose(ours[:, 2:12, 2:12], pil[:, 2:12, 2:12], rtol=0, atol=1e-6)


def test_matches_the_papers_matlab_image(shared_data: Path) -> None:
    """The paper's 14x14 test image (made in MATLAB) is MNIST test image 11 resized, times one gain
    (1.1344, applied by the paper's pipeline before clipping to [0, 1]): our resize gives the same
    image up to that single factor, to float64 rounding, and zero exactly where it is zero."""
    loadmat = pytest.importorskip("scipy.io").loadmat
    paper = loadmat(shared_data / "models/L0-TRE/Case_Study_One/sDNN_model/test_image.mat")["test_image"]
    raw = np.round(load_data("mnist:test", data_root=shared_data, indices=[11]).x[0, 0].double().numpy() * 255) / 255
    ours = imresize(raw, (14, 14))
    inside = (paper > 0) & (paper < 1)
    gain = paper[inside] / ours[inside]
    assert gain.max() - gain.min() < 1e-9 and 1.13 < gain.mean() < 1.14
    assert np.array_equal(paper == 0, ours <= 0)
    np.testing.assert_allclose(paper, np.clip(ours * gain.mean(), 0, 1), rtol=0, atol=1e-9)


def test_mnist14_spec(shared_data: Path) -> None:
    d28 = load_data("mnist:test", data_root=shared_data, indices=[0, 7, 11])
    d14 = load_data("mnist14:test", data_root=shared_data, indices=[0, 7, 11])
    assert d14.x.shape == (3, 1, 14, 14) and d14.name == "mnist14:test"
    assert d14.y is not None and d28.y is not None and d14.y.tolist() == d28.y.tolist()
    want = np.clip(imresize(d28.x[:, 0].double().numpy(), (14, 14)), 0, 1)
    np.testing.assert_allclose(d14.x[:, 0].double().numpy(), want, rtol=0, atol=1e-7)  # float32 storage
    assert any("imresize" in n for n in d14.notes)
    train = load_data("mnist14:train", data_root=shared_data, limit=5)
    assert train.x.shape == (5, 1, 14, 14) and float(train.x.min()) >= 0 and float(train.x.max()) <= 1


def test_mnist14_embedded_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """No data root: the 100 embedded test images, resized (the demo's data), with the warning."""
    monkeypatch.delenv("L0TRE_DATA", raising=False)
    from l0tre.data import EmbeddedDataWarning

    with pytest.warns(EmbeddedDataWarning):
        d = load_data("mnist14:test")
    assert d.x.shape == (100, 1, 14, 14)
    with pytest.raises(ValueError, match="mnist14:bogus|expected one of"):
        load_data("mnist14:bogus")
