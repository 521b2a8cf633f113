"""The large-input pipeline on the bundled ImageNet photos with small randomly initialised
ImageNet-shaped networks (random weights: shapes and claims only, no robustness numbers), and
the model formats: an ``nn.Module`` object, TorchScript and ONNX files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import l0tre
from l0tre.readers.images import IMAGENET_MEAN, IMAGENET_STD

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.slow]


def imagenet_shaped(seed: int = 0) -> nn.Module:
    """(N, 3, 224, 224) → (N, 1000), cheap: a strided stem, max pooling, a strided conv, a linear head."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 7, stride=4, padding=3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(8, 16, 7, stride=7), nn.ReLU(), nn.Flatten(), nn.Linear(256, 1000),
    ).eval()


@pytest.fixture(scope="module")
def photos(shared_data: Path) -> torch.Tensor:
    return l0tre.load_data(shared_data / "imagenet" / "samples", preprocess="imagenet", limit=2).x  # (2, 3, 224, 224)


def test_top_k_on_imagenet_photos(photos: torch.Tensor) -> None:
    clf = l0tre.Classifier(imagenet_shaped(), preprocessing={"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
                           input_shape=(3, 224, 224))
    s = l0tre.saliency(clf, photos, pixels="top:30", mode="eager")
    assert s.sensitivity.shape == (2, 224, 224) and s.best_value.shape == (2, 3, 224, 224)
    assert s.evaluated.flatten(1).sum(1).tolist() == [30, 30]
    assert s.lower is None and not bool(s.flips[~s.evaluated].any())
    assert bool(torch.isfinite(s.sensitivity[s.evaluated]).all())
    one = l0tre.saliency(clf, photos[1:], pixels="top:30", mode="eager")  # per image: the same
    torch.testing.assert_close(one.sensitivity, s.sensitivity[1:], atol=1e-5, rtol=1e-5, equal_nan=True)


def _formats(tmp_path: Path, net: nn.Module) -> dict[str, object]:
    x = torch.rand(1, 3, 224, 224)
    ts = tmp_path / "net.pt"
    torch.jit.save(torch.jit.trace(net, x), str(ts))
    onnx_path = tmp_path / "net.onnx"
    torch.onnx.export(net, (x,), str(onnx_path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    return {"module": net, "torchscript": ts, "onnx": onnx_path}


def test_module_torchscript_and_onnx_give_the_same_map(photos: torch.Tensor, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    net = imagenet_shaped(1)
    maps = {}
    for name, spec in _formats(tmp_path, net).items():
        clf = l0tre.load_model(spec, input_shape=(3, 224, 224))  # type: ignore[arg-type]
        s = l0tre.saliency(clf, photos[:1], pixels="sample:20", mode="eager", incremental=False)
        maps[name] = s
    ref = maps["module"]
    for name in ("torchscript", "onnx"):
        torch.testing.assert_close(maps[name].sensitivity, ref.sensitivity, atol=1e-4, rtol=1e-4, equal_nan=True)
        assert torch.equal(maps[name].flips, ref.flips)
    # the ONNX graph is converted to torch: the gradient screen picks the module's pixels
    onnx_clf = l0tre.load_model(tmp_path / "net.onnx", input_shape=(3, 224, 224))
    top_onnx = l0tre.saliency(onnx_clf, photos[:1], pixels="top:5", mode="eager", incremental=False)
    top_module = l0tre.saliency(net, photos[:1], pixels="top:5", mode="eager", incremental=False)
    assert torch.equal(top_onnx.evaluated, top_module.evaluated)
