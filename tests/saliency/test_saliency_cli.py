"""``l0tre saliency`` end to end: a TorchScript model, an array file and an image folder; the
output folder's files; errors exit 2 with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from l0tre.apps.saliency import saliency
from l0tre.cli import main

from .oracle import tiny_net

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path, torch.nn.Module, torch.Tensor]:
    net = tiny_net(2, 3)
    model_path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.trace(net, torch.rand(1, 3, 5, 5)), str(model_path))
    x = torch.rand(3, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    data_path = tmp_path / "data.npz"
    np.savez(data_path, x=x.numpy(), y=np.array([0, 1, 2]))
    return model_path, data_path, net, x


def test_cli_writes_maps_figures_and_page(files: tuple[Path, Path, nn.Module, torch.Tensor], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    model_path, data_path, net, x = files
    out = tmp_path / "out"
    code = main(["saliency", "--model", str(model_path), "--data", str(data_path), "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    with np.load(out / "saliency.npz") as z:
        sens, flips = torch.from_numpy(z["sensitivity"]), torch.from_numpy(z["flips"])
        assert z["best_value"].shape == (3, 3, 5, 5) and z["lower"].shape == (3,)
        assert np.array_equal(z["labels"], [0, 1, 2])
    api = saliency(net, x)
    torch.testing.assert_close(sens, api.sensitivity, atol=1e-5, rtol=1e-5)
    assert torch.equal(flips, api.flips)
    res = json.loads((out / "results.json").read_text())
    assert res["summary"]["lower_bound_claimed"] is True and res["summary"]["pixels"] == "all"
    assert [r["data_index"] for r in res["inputs"]] == [0, 1, 2]
    for name in ("saliency_grid.png", "saliency_000.png", "saliency_002.png"):
        assert (out / name).read_bytes()[:8] == PNG
    page = (out / "index.html").read_text()
    assert "saliency_grid.png" in page and "no normalisation or clipping" in page
    # a second run into the same folder is refused, --overwrite replaces it
    assert main(["saliency", "--model", str(model_path), "--data", str(data_path), "--out", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    code = main(["saliency", "--model", str(model_path), "--data", str(data_path), "--out", str(out), "--quiet",
                 "--overwrite", "--pixels", "sample:4", "--figures", "1"])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["summary"]["lower_bound_claimed"] is False and res["inputs"][0]["lower"] is None
    assert "no lower bound is claimed" in (out / "index.html").read_text()


@pytest.mark.parametrize(("extra", "message"), [
    (["--pixels", "sample:0"], "pixels"),
    (["--pixels", "top:x"], "pixels"),
    (["--baseline", "0.3"], "baseline"),
    (["--epsilon", "0.3"], "epsilon"),
])
def test_bad_options_exit_2_with_one_line(files: tuple[Path, Path, nn.Module, torch.Tensor], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    model_path, data_path, _, _ = files
    code = main(["saliency", "--model", str(model_path), "--data", str(data_path), "--out", str(tmp_path / "o"),
                 "--quiet", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0] and "error" in err[0]


def test_greyscale_model_given_rgb_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = tiny_net(0, 1)
    model_path = tmp_path / "grey.pt"
    torch.jit.save(torch.jit.trace(net, torch.rand(1, 1, 5, 5)), str(model_path))
    data_path = tmp_path / "rgb.npy"
    np.save(data_path, np.random.default_rng(0).random((2, 3, 5, 5), dtype=np.float32))
    code = main(["saliency", "--model", str(model_path), "--data", str(data_path), "--out", str(tmp_path / "o"),
                 "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "shape" in err[0]


def test_image_folder_of_different_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, (w, h) in enumerate([(40, 30), (30, 40)]):
        image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(folder / f"a_{i}.png")
    net = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 3)).eval()
    model_path = tmp_path / "pool.pt"
    torch.jit.save(torch.jit.trace(net, torch.rand(1, 3, 8, 8)), str(model_path))
    args = ["saliency", "--model", str(model_path), "--data", str(folder), "--out", str(tmp_path / "o"), "--quiet"]
    assert main(args) == 2
    assert "--preprocess imagenet" in capsys.readouterr().err
    assert main([*args, "--preprocess", "imagenet", "--pixels", "sample:20", "--figures", "1"]) == 0
    with np.load(tmp_path / "o" / "saliency.npz") as z:
        assert z["x"].shape == (2, 3, 224, 224) and int(z["evaluated"].sum()) == 40
