"""The MATLAB SeriesNetwork reader: the paper's sDNN gives the logits of an independent numpy forward
pass of the weights stored in the .mat file (read here directly with SciPy's MAT 5 reader, in
MATLAB's (H, W, C) layout), and the embedded ``paper-sdnn`` is exactly that network."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from l0tre import load_model
from l0tre.data import load_data

pytest.importorskip("scipy")
from scipy.io import loadmat  # noqa: E402
from scipy.io.matlab._mio5 import MatFile5Reader  # noqa: E402

SDNN = "models/L0-TRE/Case_Study_One/sDNN_model/sDNN_model.mat"
TEST_IMAGE = "models/L0-TRE/Case_Study_One/sDNN_model/test_image.mat"


def _raw_layers(path: Path) -> list[dict[str, np.ndarray]]:
    """The layer structs of the MCOS object, as MANIFEST.md says to read them."""
    ws = loadmat(path)["__function_workspace__"]
    reader = MatFile5Reader(io.BytesIO(ws.tobytes()), byte_order="<")
    reader.mat_stream.seek(8)
    reader.initialize_read()
    header, _ = reader.read_var_header()
    arr = reader.read_var_array(header, process=True)
    objs = arr["MCOS"][0, 0]["arr"][0]
    layers = []
    for o in objs.reshape(-1):
        if isinstance(o, np.ndarray) and o.dtype.names and "Name" in o.dtype.names and "Layers" not in o.dtype.names:
            layers.append({k: o[k][0, 0] for k in o.dtype.names})
    return layers


def _value(field: np.ndarray) -> np.ndarray:
    return np.asarray(field["Value"][0, 0], dtype=np.float64)


def _numpy_forward(layers: list[dict[str, np.ndarray]], image: np.ndarray) -> np.ndarray:
    """Scores (10,) of one (14, 14) image: zero-centre, conv/BN/ReLU in (H, W, C) float64, FC."""
    avg = np.asarray(layers[0]["Normalization"]["AverageImage"][0, 0], dtype=np.float64)
    a = (image - avg)[:, :, None]
    for layer in layers[1:]:
        names = set(layer)
        if "FilterSize" in names:
            w, b = _value(layer["Weights"]), _value(layer["Bias"]).reshape(-1)
            while w.ndim < 4:  # MATLAB drops trailing singleton dimensions
                w = w[..., None]
            pad = int(layer["PaddingSize"].reshape(-1)[0])
            p = np.pad(a, ((pad, pad), (pad, pad), (0, 0)))
            kh, kw = w.shape[:2]
            oh, ow = p.shape[0] - kh + 1, p.shape[1] - kw + 1
            out = np.zeros((oh, ow, w.shape[3]))
            for i in range(kh):  # cross-correlation: out[y, x] = sum p[y + i, x + j] w[i, j]
                for j in range(kw):
                    out += np.einsum("yxc,co->yxo", p[i : i + oh, j : j + ow], w[i, j])
            a = out + b
        elif "TrainedMean" in names:
            mean = np.asarray(layer["TrainedMean"], dtype=np.float64).reshape(-1)
            var = np.asarray(layer["TrainedVariance"], dtype=np.float64).reshape(-1)
            eps = float(np.asarray(layer["Epsilon"]).reshape(-1)[0])
            scale, offset = _value(layer["Scale"]).reshape(-1), _value(layer["Offset"]).reshape(-1)
            a = (a - mean) / np.sqrt(var + eps) * scale + offset
        elif "OutputSize" in names:
            w, b = _value(layer["Weights"]), _value(layer["Bias"]).reshape(-1)
            return np.tensordot(a, w, axes=([0, 1, 2], [0, 1, 2])) + b
        elif names == {"Version", "Name"}:
            a = np.maximum(a, 0.0)
    raise AssertionError("no fully connected layer")


def test_sdnn_logits_match_a_numpy_forward_pass(shared_data: Path) -> None:
    layers = _raw_layers(shared_data / SDNN)
    images = load_data("mnist14:test", data_root=shared_data, limit=8).x[:, 0].double().numpy()
    paper_image = loadmat(shared_data / TEST_IMAGE)["test_image"]
    images = np.concatenate([images, paper_image[None]])
    want = np.stack([_numpy_forward(layers, im) for im in images])
    for spec in (shared_data / SDNN, "paper-sdnn"):
        model = load_model(spec)
        assert model.input_shape == (1, 14, 14)
        got = model(torch.tensor(images, dtype=torch.float32)[:, None]).detach().double().numpy()
        # float32 network vs float64 reference: logits of magnitude <= ~40, 9 k-term sums
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * max(1.0, np.abs(want).max()))
        assert (got.argmax(1) == want.argmax(1)).all()
    assert want[-1].argmax() == 6  # the paper's test image is MNIST test image 11, a 6


def test_embedded_sdnn_is_the_mat_file(shared_data: Path) -> None:
    """The package's paper_sdnn.pt holds exactly the converted weights of the .mat file."""
    from l0tre.models.matlab import load_series_network

    module, shape = load_series_network(shared_data / SDNN)
    embedded = load_model("paper-sdnn").model.state_dict()
    assert shape == (1, 14, 14)
    assert embedded.keys() == module.state_dict().keys()
    for key, value in module.state_dict().items():
        assert torch.equal(embedded[key], value), key


def test_not_a_series_network(tmp_path: Path) -> None:
    from scipy.io import savemat

    path = tmp_path / "plain.mat"
    savemat(path, {"a": np.zeros(3)})
    with pytest.raises(ValueError, match=r"model: expected a MATLAB SeriesNetwork \.mat file"):
        load_model(path)
