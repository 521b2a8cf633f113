"""Built-in models against the shared data: accuracies, conversion fidelity, embedding."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from l0tre.data import load_data
from l0tre.models import BUILTIN, ShortcutA, list_models, load_keras, load_model
from l0tre.models.registry import EMBEDDED

from .numpy_keras import forward, read_h5_weights

CS3 = "models/L0-TRE/Case_Study_Three/MNIST"
CS5 = "models/L0-TRE/Case_Study_Five/saved_models/mnist_complicated.h5"


@pytest.fixture(scope="module")
def mnist_test(shared_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_data("mnist:test", data_root=shared_data)
    assert ds.y is not None
    return ds.x, ds.y


def _correct(name: str, x: torch.Tensor, y: torch.Tensor, root: Path) -> int:
    return int((load_model(name, data_root=root).predict(x) == y).sum())


def test_paper_mnist_accuracies(
    mnist_test: tuple[torch.Tensor, torch.Tensor], shared_data: Path
) -> None:
    x, y = mnist_test
    assert x.shape == (10000, 1, 28, 28)
    assert _correct("paper-mnist", x, y, shared_data) == 9936
    assert _correct("paper-mnist-softmax", x, y, shared_data) == 9938


def test_mnist_cnn_tutorial_accuracy(
    mnist_test: tuple[torch.Tensor, torch.Tensor], shared_data: Path
) -> None:
    x, y = mnist_test
    assert _correct("mnist-cnn-tutorial", x, y, shared_data) == 9890


def test_cifar10_resnet20(shared_data: Path) -> None:
    ds = load_data("cifar10:test", data_root=shared_data)
    clf = load_model("cifar10-resnet20", data_root=shared_data)
    assert clf.input_shape == (3, 32, 32)
    assert clf.preprocessing is not None and clf.preprocessing.mean == (0.485, 0.456, 0.406)
    assert int((clf.predict(ds.x) == ds.y).sum()) == 94
    shortcuts = [m for m in clf.model.modules() if isinstance(m, ShortcutA)]  # type: ignore[union-attr]
    assert len(shortcuts) == 2 and all(s.pad in (8, 16) for s in shortcuts)


@pytest.mark.parametrize("which", ["weights+json", "full"])
def test_keras_conversion_matches_numpy(which: str, shared_data: Path) -> None:
    if which == "full":
        path = shared_data / CS5
        with h5py.File(path, "r") as f:
            layers = json.loads(f.attrs["model_config"])["config"]
            weights = read_h5_weights(f["model_weights"])
    else:
        path = shared_data / CS3 / "model.h5"
        layers = json.loads((shared_data / CS3 / "model.json").read_text())["config"]
        with h5py.File(path, "r") as f:
            weights = read_h5_weights(f)
    x = load_data("mnist:test", data_root=shared_data, limit=5).x
    ref = forward(layers, weights, x.permute(0, 2, 3, 1).numpy())
    km = load_keras(path)
    with torch.no_grad():
        got = km.module(x).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    assert km.output == ("probabilities" if which == "full" else "logits")
    assert km.input_shape == (1, 28, 28)


def test_embedded_weights_equal_h5_conversion(shared_data: Path) -> None:
    km = load_keras(shared_data / CS3 / "model.json")
    clf = load_model("paper-mnist")  # no data root needed
    x = load_data("mnist:test", data_root=shared_data, limit=20).x
    with torch.no_grad():
        assert torch.equal(clf(x), km.module(x))
    for (k1, v1), (k2, v2) in zip(
        km.module.state_dict().items(), clf.model.state_dict().items(), strict=True
    ):  # type: ignore[union-attr]
        assert k1 == k2 and torch.equal(v1, v2)


def test_softmax_model_is_probabilities(shared_data: Path) -> None:
    clf = load_model("paper-mnist-softmax", data_root=shared_data)
    assert clf.output.value == "probabilities"
    out = clf(load_data("mnist:test", limit=3).x)
    torch.testing.assert_close(out.sum(1), torch.ones(3))
    assert load_model("paper-mnist").output.value == "logits"


def test_embedded_paper_mnist_without_data_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("L0TRE_DATA", raising=False)
    ds = load_data("mnist:test")
    clf = load_model("paper-mnist")
    assert ds.y is not None and len(ds) == 100
    assert int((clf.predict(ds.x) == ds.y).sum()) == 100
    assert clf.input_shape == (1, 28, 28) and clf.name == "paper-mnist"


def test_registry_rows(shared_data: Path) -> None:
    rows = list_models()
    assert [r.name for r in rows] == [
        "paper-mnist",
        "paper-mnist-softmax",
        "paper-sdnn",
        "cifar10-resnet20",
        "mnist-cnn-tutorial",
        "mnist-smallcnn-trades",
    ]
    assert BUILTIN["paper-mnist"].source == EMBEDDED
    for r in rows:
        assert r.locate(shared_data) is not None, r.name
        assert len(r.input_shape) == 3 and r.description


def test_builtin_needs_data_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("L0TRE_DATA", raising=False)
    with pytest.raises(
        FileNotFoundError, match=r"model 'cifar10-resnet20'.*no data root.*L0TRE_DATA"
    ):
        load_model("cifar10-resnet20")
    with pytest.raises(ValueError, match=r"mnist_complicated\.h5"):
        load_model("paper-mnist-softmax")
    assert BUILTIN["mnist-cnn-tutorial"].locate() is None


def test_builtin_file_missing_under_root(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"expected the file 'models/mnist/advtutorial_model_cnn\.pt'"
    ):
        load_model("mnist-cnn-tutorial", data_root=tmp_path)
    with pytest.raises(ValueError, match=r"data_root: expected an existing directory"):
        load_model("mnist-cnn-tutorial", data_root=tmp_path / "nope")


def test_env_var_data_root(monkeypatch: pytest.MonkeyPatch, shared_data: Path) -> None:
    monkeypatch.setenv("L0TRE_DATA", str(shared_data))
    assert load_model("mnist-cnn-tutorial").name == "mnist-cnn-tutorial"
    monkeypatch.setenv("L0TRE_DATA", str(shared_data / "missing"))
    with pytest.raises(ValueError, match=r"\$L0TRE_DATA: expected an existing directory"):
        load_model("mnist-cnn-tutorial")
