"""MATLAB SeriesNetwork files (``.mat``, Neural Network Toolbox 2018) → ``torch.nn.Sequential``.

A SeriesNetwork is saved as an opaque MCOS object: :func:`scipy.io.loadmat` shows only a
``__function_workspace__`` byte array. That array is itself a MAT-file stream; read with SciPy's
MAT 5 reader (from byte 8), it holds the layers as structs (``MCOS.arr``), each with its learnt
values (``Weights.Value``, ``Bias.Value``, ``TrainedMean`` …). MATLAB stores images as
``(H, W, C)`` and filters as ``(h, w, C_in, C_out)``; they become torch's ``(C_out, C_in, h, w)``.

Supported layers (all the paper's sDNN uses): image input with ``zerocenter`` or ``none``
normalisation, 2-D convolution (stride, manual padding), batch normalisation, ReLU, fully
connected, softmax and classification output (both dropped: the module returns the scores
before the softmax, the same label). Anything else is refused with its name.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .zoo import SubtractImage

__all__ = ["MatLayer", "load_series_network", "read_series_network", "series_network_to_torch"]


@dataclass(frozen=True)
class MatLayer:
    """One layer of a SeriesNetwork: its kind, name and the values it stores.

    Attributes:
        kind: ``input``, ``conv``, ``batchnorm``, ``relu``, ``fc``, ``softmax`` or ``output``.
        name: the layer's MATLAB name.
        values: float32 arrays in MATLAB layout (``Weights``, ``Bias``, ``AverageImage``,
            ``TrainedMean``, ``TrainedVariance``, ``Offset``, ``Scale``) and float settings
            (``PaddingSize`` …).
    """

    kind: str
    name: str
    values: dict[str, np.ndarray]


def _unwrap(value: Any) -> Any:
    """The one element inside MATLAB's ``(1, 1)`` object/struct wrappers."""
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.reshape(-1)[0]
    return value


def _field(struct: np.ndarray, name: str) -> Any:
    """``struct.name`` of a ``(1, 1)`` MATLAB struct, unwrapped."""
    return _unwrap(struct[name].reshape(-1)[0])


def _learnt(struct: np.ndarray, name: str) -> np.ndarray:
    """A learnable parameter's value (``struct.name.Value``) as float32."""
    return np.asarray(_field(_field(struct, name), "Value"), dtype=np.float32)


def _kind(fields: set[str], name: str) -> str:
    """The layer kind from its struct's field names (SeriesNetwork layers carry no class name)."""
    if "Normalization" in fields:
        return "input"
    if "FilterSize" in fields and "NumFilters" in fields:
        return "conv"
    if "TrainedMean" in fields:
        return "batchnorm"
    if "OutputSize" in fields and "Weights" in fields:
        return "fc"
    if "ClassNames" in fields:
        return "output"
    if "VectorFormat" in fields:
        return "softmax"
    if fields == {"Version", "Name"} and "relu" in name.lower():
        return "relu"
    raise ValueError(f"model: unsupported MATLAB layer {name!r} (fields {sorted(fields)}); supported: image input, "
                     "convolution2d, batchnorm, relu, fully connected, softmax, classification output")


def _layer(struct: np.ndarray) -> MatLayer:
    """One layer struct → :class:`MatLayer`."""
    fields = set(struct.dtype.names or ())
    name = str(np.asarray(_field(struct, "Name")).reshape(-1)[0]) if "Name" in fields else "?"
    kind = _kind(fields, name)
    values: dict[str, np.ndarray] = {}
    if kind == "input":
        norm = _field(struct, "Normalization")
        kind_name = str(np.asarray(_field(norm, "Type")).reshape(-1)[0])
        if kind_name not in ("zerocenter", "none"):
            raise ValueError(f"model: unsupported input normalisation {kind_name!r} of MATLAB layer {name!r}")
        values["InputSize"] = np.asarray(_field(struct, "InputSize"), dtype=np.float64).reshape(-1)
        if kind_name == "zerocenter":
            values["AverageImage"] = np.asarray(_field(norm, "AverageImage"), dtype=np.float32)
    elif kind in ("conv", "fc"):
        values["Weights"], values["Bias"] = _learnt(struct, "Weights"), _learnt(struct, "Bias")
        if kind == "conv":
            for key in ("Stride", "PaddingSize"):
                values[key] = np.asarray(_field(struct, key), dtype=np.float64).reshape(-1)
            mode = str(np.asarray(_field(struct, "PaddingMode")).reshape(-1)[0])
            if mode != "manual":
                raise ValueError(f"model: unsupported padding mode {mode!r} of MATLAB layer {name!r}")
    elif kind == "batchnorm":
        values["Offset"], values["Scale"] = _learnt(struct, "Offset"), _learnt(struct, "Scale")
        for key in ("TrainedMean", "TrainedVariance", "Epsilon"):
            values[key] = np.asarray(_field(struct, key), dtype=np.float64 if key == "Epsilon" else np.float32)
    return MatLayer(kind, name, values)


def read_series_network(path: str | os.PathLike[str]) -> list[MatLayer]:
    """The layers of the SeriesNetwork saved in the ``.mat`` file ``path``, in order.

    Raises:
        ValueError: not a MAT file, no SeriesNetwork in it, or an unsupported layer.
    """
    from scipy.io import loadmat  # optional dependency (the ``certify`` / ``dev`` extras)
    from scipy.io.matlab._mio5 import MatFile5Reader

    path = Path(path)
    try:
        outer = loadmat(path)
        stream = io.BytesIO(outer["__function_workspace__"].tobytes())
        reader = MatFile5Reader(stream, byte_order="<")
        reader.mat_stream.seek(8)
        reader.initialize_read()
        header, _ = reader.read_var_header()
        mcos = _unwrap(reader.read_var_array(header, process=True)["MCOS"].reshape(-1)[0])
        objects = _unwrap(mcos["arr"].reshape(-1)[0]) if isinstance(mcos, np.ndarray) else None
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"model: expected a MATLAB SeriesNetwork .mat file, got {str(path)!r} ({exc})") from exc
    if objects is None:
        raise ValueError(f"model: expected a MATLAB SeriesNetwork .mat file, got {str(path)!r} (no MCOS objects)")
    structs = [_unwrap(o) for o in np.asarray(objects).reshape(-1)]
    layers = [_layer(s) for s in structs if isinstance(s, np.ndarray) and s.dtype.names and "Name" in s.dtype.names
              and "Layers" not in s.dtype.names]
    if not layers or layers[0].kind != "input":
        raise ValueError(f"model: expected a SeriesNetwork starting with an image input layer in {str(path)!r}")
    return layers


def _conv(layer: MatLayer) -> nn.Conv2d:
    """A MATLAB convolution (``(h, w, C_in, C_out)`` filters; padding top, bottom, left, right)."""
    w = layer.values["Weights"]
    while w.ndim < 4:  # MATLAB drops trailing singleton dimensions (one filter, one channel)
        w = w[..., None]
    top, bottom, left, right = (int(v) for v in layer.values["PaddingSize"])
    if top != bottom or left != right:
        raise ValueError(f"model: asymmetric padding {[top, bottom, left, right]} of MATLAB layer {layer.name!r}")
    rows, cols = (int(v) for v in layer.values["Stride"])
    stride = (rows, cols)
    conv = nn.Conv2d(w.shape[2], w.shape[3], (w.shape[0], w.shape[1]), stride=stride, padding=(top, left))
    conv.load_state_dict({"weight": torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))),
                          "bias": torch.from_numpy(layer.values["Bias"].reshape(-1))})
    return conv


def _batchnorm(layer: MatLayer) -> nn.BatchNorm2d:
    """A MATLAB batch normalisation with its trained statistics."""
    v = layer.values
    bn = nn.BatchNorm2d(v["Scale"].size, eps=float(v["Epsilon"].reshape(-1)[0]))
    bn.load_state_dict({
        "weight": torch.from_numpy(v["Scale"].reshape(-1)), "bias": torch.from_numpy(v["Offset"].reshape(-1)),
        "running_mean": torch.from_numpy(v["TrainedMean"].reshape(-1)),
        "running_var": torch.from_numpy(v["TrainedVariance"].reshape(-1)),
        "num_batches_tracked": torch.tensor(0),
    })
    return bn


def _fc(layer: MatLayer, spatial: bool) -> nn.Linear:
    """A MATLAB fully connected layer; on a ``(H, W, C)`` map its weights are ``(H, W, C, out)``."""
    w = layer.values["Weights"]
    if w.ndim == 4:  # (H, W, C, out) → torch's flattened (out, C·H·W)
        w2 = w.transpose(3, 2, 0, 1).reshape(w.shape[3], -1)
    elif w.ndim == 2 and not spatial:  # (out, in)
        w2 = w
    else:
        raise ValueError(f"model: unsupported weight shape {w.shape} of MATLAB layer {layer.name!r}")
    fc = nn.Linear(w2.shape[1], w2.shape[0])
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(w2)))
        fc.bias.copy_(torch.from_numpy(layer.values["Bias"].reshape(-1)))
    return fc


def series_network_to_torch(layers: Sequence[MatLayer]) -> tuple[nn.Sequential, tuple[int, int, int]]:
    """``(module, input_shape)``: the layers as a module ``(N, C, H, W)`` pixels → ``(N, classes)`` scores.

    The input layer's AverageImage becomes a :class:`~l0tre.models.zoo.SubtractImage` (inside the
    module, so the classifier sees raw pixels); softmax and classification output are dropped.
    """
    size = [int(v) for v in layers[0].values["InputSize"]]
    h, w, c = (size + [1])[:3]
    modules: list[nn.Module] = []
    if "AverageImage" in layers[0].values:
        sub = SubtractImage((c, h, w))
        avg = layers[0].values["AverageImage"].reshape(h, w, c).transpose(2, 0, 1)
        sub.average.copy_(torch.from_numpy(np.ascontiguousarray(avg)))
        modules.append(sub)
    spatial = True
    for layer in layers[1:]:
        if layer.kind == "conv":
            modules.append(_conv(layer))
        elif layer.kind == "batchnorm":
            modules.append(_batchnorm(layer))
        elif layer.kind == "relu":
            modules.append(nn.ReLU())
        elif layer.kind == "fc":
            if spatial:
                modules.append(nn.Flatten())
            modules.append(_fc(layer, spatial))
            spatial = False
        elif layer.kind == "input":
            raise ValueError(f"model: a second input layer {layer.name!r} in the SeriesNetwork")
    return nn.Sequential(*modules).eval(), (c, h, w)


def load_series_network(path: str | os.PathLike[str]) -> tuple[nn.Sequential, tuple[int, int, int]]:
    """``(module, input_shape)`` of the SeriesNetwork in ``path`` (see :func:`series_network_to_torch`)."""
    return series_network_to_torch(read_series_network(path))
