"""Image folders for large models: ImageNet preprocessing against a hand-written reference on the
bundled JPEGs, and clear errors for images of different sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from l0tre import load_data

Image = pytest.importorskip("PIL.Image")


def _reference(path: Path) -> np.ndarray:
    """Resize 256 / centre crop 224 written out by hand: the shorter side becomes 256, the longer
    ``floor(256 * long / short)``; the crop starts at ``round((side - 224) / 2)``."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if w <= h:
        nw, nh = 256, int(256 * h / w)
    else:
        nw, nh = int(256 * w / h), 256
    arr = np.asarray(img.resize((nw, nh), Image.BILINEAR), dtype=np.float32) / 255.0
    top, left = int(round((nh - 224) / 2)), int(round((nw - 224) / 2))
    return arr[top : top + 224, left : left + 224].transpose(2, 0, 1)


def test_imagenet_preprocessing_matches_the_reference(shared_data: Path) -> None:
    folder = shared_data / "imagenet" / "samples"
    files = sorted(folder.glob("*.jpg"))
    ds = load_data(folder, preprocess="imagenet")
    assert ds.x.shape == (len(files), 3, 224, 224) and ds.x.dtype == torch.float32
    assert ds.y is not None and ds.y.tolist() == [int(p.stem.rsplit("_", 1)[1]) for p in files]
    for i in (0, 10, 19):  # image 10 is 1024x683 (landscape), the others 512x512
        assert torch.equal(ds.x[i], torch.from_numpy(_reference(files[i]))), files[i].name
    assert any("centre crop 224" in n for n in ds.notes)


def _write(folder: Path, sizes: list[tuple[int, int]]) -> None:
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(folder / f"im_{i}_{i}.png")


def test_portrait_images_crop_the_centre(tmp_path: Path) -> None:
    _write(tmp_path, [(300, 500)])
    ds = load_data(tmp_path, preprocess="imagenet")
    assert torch.equal(ds.x[0], torch.from_numpy(_reference(tmp_path / "im_0_0.png")))


def test_images_of_different_sizes_need_a_preprocessing(tmp_path: Path) -> None:
    _write(tmp_path, [(40, 30), (30, 40)])
    with pytest.raises(ValueError, match="one size.*--preprocess imagenet"):
        load_data(tmp_path)
    assert load_data(tmp_path, preprocess="imagenet").x.shape == (2, 3, 224, 224)
    assert load_data(tmp_path, input_shape=(3, 30, 40)).x.shape == (2, 3, 30, 40)  # the model's shape


def test_bad_preprocess_values(tmp_path: Path) -> None:
    _write(tmp_path, [(40, 30)])
    with pytest.raises(ValueError, match="preprocess"):
        load_data(tmp_path, preprocess="resnet")
    with pytest.raises(ValueError, match="preprocess.*224"):
        load_data(tmp_path, preprocess="imagenet", input_shape=(1, 28, 28))
    np.save(tmp_path / "a.npy", np.zeros((1, 1, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="preprocess"):
        load_data(tmp_path / "a.npy", preprocess="imagenet")
