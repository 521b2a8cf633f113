"""The Keras → torch converter on synthetic models (padding, strides, flatten order, BN)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from l0tre.models import keras_to_torch, load_keras, load_model

from .numpy_keras import forward


def _conv(
    name: str,
    filters: int,
    k: int,
    s: int = 1,
    padding: str = "valid",
    act: str = "linear",
    input_shape: tuple[int, int, int] | None = None,
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name,
        "filters": filters,
        "kernel_size": [k, k],
        "strides": [s, s],
        "padding": padding,
        "activation": act,
        "data_format": "channels_last",
        "dilation_rate": [1, 1],
        "use_bias": True,
    }
    if input_shape is not None:
        cfg["batch_input_shape"] = [None, *input_shape]
    return {"class_name": "Conv2D", "config": cfg}


def _model(
    rng: np.random.Generator,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, np.ndarray]]]:
    layers = [
        _conv("c1", 4, 3, 1, "same", "relu", input_shape=(9, 10, 2)),
        _conv("c2", 5, 3, 2, "same"),  # asymmetric TF padding (stride 2)
        {"class_name": "BatchNormalization", "config": {"name": "bn", "axis": -1, "epsilon": 1e-3}},
        {"class_name": "Activation", "config": {"name": "a1", "activation": "relu"}},
        {
            "class_name": "MaxPooling2D",
            "config": {"name": "p1", "pool_size": [2, 2], "strides": [1, 1], "padding": "valid"},
        },
        {"class_name": "Flatten", "config": {"name": "f"}},
        {"class_name": "Dropout", "config": {"name": "d", "rate": 0.5}},
        {"class_name": "Dense", "config": {"name": "fc", "units": 3, "activation": "softmax"}},
    ]
    weights = {
        "c1": {"kernel": rng.normal(size=(3, 3, 2, 4)), "bias": rng.normal(size=4)},
        "c2": {"kernel": rng.normal(size=(3, 3, 4, 5)), "bias": rng.normal(size=5)},
        "bn": {
            "gamma": rng.uniform(0.5, 2, 5),
            "beta": rng.normal(size=5),
            "moving_mean": rng.normal(size=5),
            "moving_variance": rng.uniform(0.5, 2, 5),
        },
        "fc": {"kernel": rng.normal(size=(4 * 4 * 5, 3)) * 0.1, "bias": rng.normal(size=3)},
    }
    return layers, {k: {n: a.astype(np.float32) for n, a in v.items()} for k, v in weights.items()}


def test_converter_matches_numpy_reference() -> None:
    layers, weights = _model(np.random.default_rng(0))
    km = keras_to_torch(layers, weights)
    assert km.input_shape == (2, 9, 10) and km.output == "probabilities"
    x = np.random.default_rng(1).uniform(size=(4, 9, 10, 2)).astype(np.float32)
    ref = forward(layers, weights, x)
    with torch.no_grad():
        got = km.module(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def _write_weights_h5(
    path: Path, layers: list[dict[str, Any]], weights: dict[str, dict[str, np.ndarray]], full: bool
) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = b"tensorflow"
        if full:
            f.attrs["model_config"] = json.dumps(
                {"class_name": "Sequential", "config": layers}
            ).encode()
        g = f.create_group("model_weights") if full else f
        names = [lay["config"]["name"] for lay in layers]
        g.attrs["layer_names"] = np.array([n.encode() for n in names])
        for n in names:
            lg = g.create_group(n)
            wnames = [f"{n}/{k}:0".encode() for k in weights.get(n, {})]
            lg.attrs["weight_names"] = (
                np.array(wnames) if wnames else np.array([], dtype=np.float64)
            )
            for k, a in weights.get(n, {}).items():
                lg[f"{n}/{k}:0"] = a


@pytest.mark.parametrize("full", [False, True])
def test_h5_files_round_trip(tmp_path: Path, full: bool) -> None:
    layers, weights = _model(np.random.default_rng(2))
    path = tmp_path / "m.h5"
    _write_weights_h5(path, layers, weights, full)
    if not full:
        (tmp_path / "m.json").write_text(json.dumps({"class_name": "Sequential", "config": layers}))
    clf = load_model(path if full else tmp_path / "m.json")
    assert clf.output.value == "probabilities" and clf.input_shape == (2, 9, 10)
    x = torch.rand(3, 2, 9, 10)
    ref = forward(layers, weights, x.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(clf(x).numpy(), ref, atol=1e-5, rtol=0)


def test_keras_errors(tmp_path: Path) -> None:
    layers, weights = _model(np.random.default_rng(3))
    path = tmp_path / "w.h5"
    _write_weights_h5(path, layers, weights, full=False)
    with pytest.raises(
        ValueError, match=r"holds weights only; expected its architecture JSON at .*w\.json"
    ):
        load_model(path)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match=r"model: expected a readable HDF5 file, got .*bad\.h5"):
        load_model(bad)
    with pytest.raises(
        ValueError, match=r"keras layer 'lstm' \(LSTM\): expected one of .*Conv2D.*got 'LSTM'"
    ):
        keras_to_torch([{"class_name": "LSTM", "config": {"name": "lstm"}}], {}, (1, 4, 4))
    with pytest.raises(
        ValueError, match=r"keras weights: layer 'c1' needs weight 'kernel', got \[\]"
    ):
        keras_to_torch(layers, {})
    with pytest.raises(ValueError, match=r"input_shape: the Keras model has no batch_input_shape"):
        keras_to_torch([{"class_name": "Flatten", "config": {"name": "f"}}], {})
    (tmp_path / "w.json").write_text("{not json")
    with pytest.raises(
        ValueError, match=r"expected a Keras JSON architecture in .*got unparsable text"
    ):
        load_keras(path)
