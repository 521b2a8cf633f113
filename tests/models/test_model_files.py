"""Loading models from files and modules: ONNX, TorchScript, state dicts, pickles, errors."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from l0tre.classifier import Classifier
from l0tre.models import (
    load_model,
    match_architecture,
    mnist_cnn_tutorial,
    paper_mnist_cnn,
    resnet20,
)
from l0tre.models.loader import pickle_globals
from l0tre.models.onnx_loader import _torchvision_stand_in

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _small_net(softmax: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 5),
    ]
    if softmax:
        layers.append(nn.Softmax(dim=1))
    return nn.Sequential(*layers).eval()


def _export_onnx(model: nn.Module, path: Path) -> None:
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 14, 14),),
        str(path),
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
    )


@pytest.mark.parametrize("softmax", [False, True])
def test_onnx_round_trip_matches_onnxruntime(tmp_path: Path, softmax: bool) -> None:
    path = tmp_path / "net.onnx"
    _export_onnx(_small_net(softmax), path)
    clf = load_model(path)
    assert clf.input_shape == (1, 14, 14)
    assert clf.output.value == ("probabilities" if softmax else "logits")
    x = torch.rand(7, 1, 14, 14)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()}
    )[0]
    np.testing.assert_allclose(clf(x).numpy(), ref, atol=1e-5, rtol=0)


def test_torchvision_stand_in_is_temporary() -> None:
    try:
        import torchvision  # noqa: F401

        real = True
    except Exception:  # missing or broken beside this torch
        real = False
    with _torchvision_stand_in():
        import torchvision

        assert callable(torchvision.ops.nms)
    if not real:
        assert "torchvision" not in sys.modules and "torchvision.ops" not in sys.modules


def test_onnx_corrupt(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ValueError, match=r"model: expected a valid ONNX file, got .*bad\.onnx"):
        load_model(bad)


def test_torchscript_round_trip(tmp_path: Path) -> None:
    net = _small_net()
    path = tmp_path / "net.pt"
    torch.jit.script(net).save(str(path))
    clf = load_model(path, input_shape=(1, 14, 14), output="logits")
    x = torch.rand(3, 1, 14, 14)
    torch.testing.assert_close(clf(x), net(x), rtol=0, atol=1e-6)
    assert clf.input_shape == (1, 14, 14) and clf.name == "net.pt"


@pytest.mark.parametrize(
    "arch, build",
    [
        ("paper-mnist", paper_mnist_cnn),
        ("mnist-cnn-tutorial", mnist_cnn_tutorial),
        ("cifar10-resnet20", resnet20),
    ],
)
def test_state_dict_without_arch(tmp_path: Path, arch: str, build: type[nn.Module]) -> None:
    torch.manual_seed(1)
    net = build().eval()
    path = tmp_path / "w.pth"
    torch.save(net.state_dict(), path)
    clf = load_model(path)
    shape = (1, 28, 28) if "mnist" in arch else (3, 32, 32)
    assert clf.input_shape == shape
    x = torch.rand(2, *shape)
    torch.testing.assert_close(clf(x), net(x))
    assert type(match_architecture(net.state_dict())[1]) is type(net)


def test_checkpoint_dict_with_module_prefix_and_arch(tmp_path: Path) -> None:
    net = mnist_cnn_tutorial().eval()
    path = tmp_path / "ckpt.th"
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path
    )
    clf = load_model(path, arch="mnist-cnn-tutorial", bounds=(0.0, 1.0), device="cpu")
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(clf(x), net(x))


def test_state_dict_errors(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save(_small_net().state_dict(), path)
    with pytest.raises(
        ValueError, match=r"arch: the state_dict's 6 parameter names/shapes match no built-in"
    ):
        load_model(path)
    with pytest.raises(ValueError, match=r"arch: the state_dict does not fit 'paper-mnist'"):
        load_model(path, arch="paper-mnist")
    with pytest.raises(ValueError, match=r"arch: expected one of paper-mnist, .*got 'vgg'"):
        load_model(path, arch="vgg")
    torch.save({"note": "no tensors"}, path)
    with pytest.raises(
        ValueError, match=r"model: expected a state_dict, checkpoint dict or module .*got dict"
    ):
        load_model(path)


def test_trust_pickle_guard(tmp_path: Path) -> None:
    net = _small_net()
    path = tmp_path / "full.pt"
    torch.save(net, path)
    with pytest.raises(
        ValueError, match=r"holds pickled code \(it names .*\.Conv2d.*--trust-pickle \(trust_pickle=True\)"
    ):
        load_model(path)
    clf = load_model(path, trust_pickle=True, input_shape=(1, 14, 14))
    x = torch.rand(2, 1, 14, 14)
    torch.testing.assert_close(clf(x), net(x))


class _RunsCode:
    """Unpickling this runs ``touch MARKER`` through ``os.system``: code run by the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "torch.save legacy", "pickle protocol 4", "pickle protocol 0"])
def test_malicious_pickle_is_refused_as_code(tmp_path: Path, how: str) -> None:
    """A .pt whose unpickling would run code: refused, never run, and the message says that it holds
    code and names --trust-pickle (not "corrupt")."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"weight": _RunsCode(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    elif how == "torch.save legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        with path.open("wb") as fh:
            pickle.dump(payload, fh, protocol=4 if how.endswith("4") else 0)
    with pytest.raises(ValueError) as info:
        load_model(path)
    text = str(info.value)
    assert "holds pickled code" in text and "--trust-pickle" in text and "trust_pickle=True" in text
    assert "system" in text and "corrupt" not in text
    assert not marker.exists()
    assert pickle_globals(path) is not None and any(n.endswith(".system") for n in pickle_globals(path) or [])


def test_corrupt_torch_file_is_not_called_code(tmp_path: Path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(ValueError, match=r"model: expected a readable torch file") as info:
        load_model(path)
    assert "pickled code" not in str(info.value)


def test_module_spec_and_options() -> None:
    net = _small_net()
    clf = load_model(
        net,
        bounds=(0.0, 255.0),
        preprocessing={"mean": [0.5], "std": [0.25]},
        output="probs",
        input_shape=(1, 14, 14),
    )
    assert isinstance(clf, Classifier)
    assert clf.bounds == (0.0, 255.0) and clf.output.value == "probabilities"
    assert clf.preprocessing is not None and clf.preprocessing.std == (0.25,)
    x = torch.rand(2, 1, 14, 14)
    torch.testing.assert_close(clf(x), net((x - 0.5) / 0.25))


@pytest.mark.parametrize("content", [b"", b"not a torch file at all", b"PK\x03\x04broken zip"])
def test_corrupt_torch_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"model: expected a readable torch file, got .*bad\.pt"):
        load_model(path)


def test_truncated_legacy_checkpoint(tmp_path: Path, shared_data: Path) -> None:
    data = (shared_data / "models/cifar10/akamaster_resnet20-12fca82f.th").read_bytes()
    path = tmp_path / "trunc.th"
    path.write_bytes(data[:5000])
    with pytest.raises(ValueError, match=r"model: expected a readable torch file"):
        load_model(path)


def test_name_and_path_errors(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"expected a built-in name \(paper-mnist, paper-mnist-softmax, paper-sdnn, "
        r"cifar10-resnet20, mnist-cnn-tutorial[^)]*\).*got 'resnet50'",
    ):
        load_model("resnet50")
    with pytest.raises(
        FileNotFoundError, match=r"model: expected an existing model file, got .*nope\.pt"
    ):
        load_model(str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match=r"got the directory"):
        load_model(tmp_path)
    with pytest.raises(
        TypeError, match=r"model: expected a name, path or torch.nn.Module, got int"
    ):
        load_model(3)  # type: ignore[arg-type]
