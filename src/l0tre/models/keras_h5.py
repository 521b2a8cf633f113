"""Keras-2 HDF5 models → ``torch.nn.Sequential`` (read with h5py, no TensorFlow).

Two layouts are supported, the ones the L0-TRE paper shipped:

* a weights-only ``model.h5`` (``model.save_weights``) next to its architecture
  ``model.json`` (``model.to_json()``);
* a full model ``*.h5`` (``model.save``) with a ``model_config`` attribute.

Keras works channels-last (NHWC); the converted module works NCHW:
conv kernels go HWIO → OIHW, and the first Dense after a Flatten gets its input rows
reordered from Keras' HWC flatten order to torch's CHW order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["KerasModel", "keras_to_torch", "load_keras"]

SUPPORTED_LAYERS = (
    "InputLayer",
    "Conv2D",
    "Dense",
    "Activation",
    "ReLU",
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalAveragePooling2D",
    "Flatten",
    "Dropout",
    "BatchNormalization",
)
_Shape = tuple[int, ...]


@dataclass(frozen=True)
class KerasModel:
    """A converted Keras model.

    Attributes:
        module: the equivalent ``nn.Sequential`` taking ``(N, C, H, W)``.
        output: ``"probabilities"`` if the model ends in a softmax, else ``"logits"``.
        input_shape: ``(C, H, W)`` (from the model's ``batch_input_shape``).
    """

    module: nn.Sequential
    output: str
    input_shape: tuple[int, int, int]


def _activation(name: str, where: str) -> nn.Module | None:
    table: dict[str, type[nn.Module] | None] = {
        "linear": None,
        "relu": nn.ReLU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "softmax": None,
    }
    if name not in table:
        raise ValueError(f"{where}: expected activation in {sorted(table)}, got {name!r}")
    if name == "softmax":
        return nn.Softmax(dim=1)
    cls = table[name]
    return cls() if cls is not None else None


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


def _same_pad(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TensorFlow 'same' padding ``(before, after)`` for one spatial dimension."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _conv_out(size: int, k: int, s: int, d: int, pad: int) -> int:
    return (size + pad - d * (k - 1) - 1) // s + 1


def _get(weights: Mapping[str, Mapping[str, np.ndarray]], layer: str, key: str) -> torch.Tensor:
    if layer not in weights or key not in weights[layer]:
        have = sorted(weights.get(layer, {}))
        raise ValueError(f"keras weights: layer {layer!r} needs weight {key!r}, got {have}")
    return torch.from_numpy(np.ascontiguousarray(weights[layer][key], dtype=np.float32))


def keras_to_torch(
    layers: list[dict[str, Any]],
    weights: Mapping[str, Mapping[str, np.ndarray]],
    input_shape: tuple[int, ...] | None = None,
) -> KerasModel:
    """Convert a Keras Sequential layer list into an equivalent NCHW ``nn.Sequential``.

    Args:
        layers: the ``config`` list of a Keras-2 Sequential model (each ``{"class_name",
            "config"}``).
        weights: ``{layer_name: {"kernel": array, "bias": array, ...}}`` in Keras layout.
        input_shape: ``(C, H, W)``, needed only if the first layer has no
            ``batch_input_shape``.

    Raises:
        ValueError: an unsupported layer or option, or weights that do not fit.
    """
    shape: _Shape | None = tuple(input_shape) if input_shape is not None else None
    if shape is None and layers:
        bis = layers[0].get("config", {}).get("batch_input_shape")
        if bis is not None:
            dims = [int(v) for v in bis[1:]]
            shape = (dims[2], dims[0], dims[1]) if len(dims) == 3 else tuple(dims)
    if shape is None:
        raise ValueError("input_shape: the Keras model has no batch_input_shape; pass (C, H, W)")
    first_shape = shape
    mods: list[nn.Module] = []
    perm: torch.Tensor | None = None  # pending HWC→CHW row order for the next Dense
    for layer in layers:
        cls, cfg = layer.get("class_name", "?"), layer.get("config", {})
        name = str(cfg.get("name", cls))
        where = f"keras layer {name!r} ({cls})"
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise ValueError(
                f"{where}: expected data_format 'channels_last', got {cfg['data_format']!r}"
            )
        if cls in ("InputLayer", "Dropout"):
            continue
        if cls == "Conv2D":
            if len(shape) != 3:
                raise ValueError(f"{where}: expected a (C, H, W) input, got shape {shape}")
            kernel = _get(weights, name, "kernel")  # (kh, kw, in, out)
            kh, kw = _pair(cfg["kernel_size"])
            s, d = _pair(cfg.get("strides", 1)), _pair(cfg.get("dilation_rate", 1))
            padding = cfg.get("padding", "valid")
            if padding == "valid":
                ph, pw = (0, 0), (0, 0)
            elif padding == "same":
                ph, pw = _same_pad(shape[1], kh, s[0], d[0]), _same_pad(shape[2], kw, s[1], d[1])
            else:
                raise ValueError(f"{where}: expected padding 'valid' or 'same', got {padding!r}")
            if ph[0] != ph[1] or pw[0] != pw[1]:
                mods.append(nn.ZeroPad2d((pw[0], pw[1], ph[0], ph[1])))
                sym = (0, 0)
            else:
                sym = (ph[0], pw[0])
            conv = nn.Conv2d(
                shape[0],
                int(cfg["filters"]),
                (kh, kw),
                stride=s,
                padding=sym,
                dilation=d,
                bias=bool(cfg.get("use_bias", True)),
            )
            if tuple(kernel.shape) != (kh, kw, shape[0], conv.out_channels):
                raise ValueError(
                    f"{where}: expected kernel {(kh, kw, shape[0], conv.out_channels)}, "
                    f"got {tuple(kernel.shape)}"
                )
            conv.weight.data.copy_(kernel.permute(3, 2, 0, 1))
            if conv.bias is not None:
                conv.bias.data.copy_(_get(weights, name, "bias"))
            mods.append(conv)
            shape = (
                conv.out_channels,
                _conv_out(shape[1], kh, s[0], d[0], ph[0] + ph[1]),
                _conv_out(shape[2], kw, s[1], d[1], pw[0] + pw[1]),
            )
            act = _activation(cfg.get("activation", "linear"), where)
        elif cls == "Dense":
            if len(shape) != 1:
                raise ValueError(
                    f"{where}: expected a flat input (Flatten first), got shape {shape}"
                )
            kernel = _get(weights, name, "kernel")  # (in, out)
            lin = nn.Linear(shape[0], int(cfg["units"]), bias=bool(cfg.get("use_bias", True)))
            if tuple(kernel.shape) != (shape[0], lin.out_features):
                raise ValueError(
                    f"{where}: expected kernel {(shape[0], lin.out_features)}, "
                    f"got {tuple(kernel.shape)}"
                )
            w = kernel.t()
            lin.weight.data.copy_(w[:, perm] if perm is not None else w)
            perm = None
            if lin.bias is not None:
                lin.bias.data.copy_(_get(weights, name, "bias"))
            mods.append(lin)
            shape = (lin.out_features,)
            act = _activation(cfg.get("activation", "linear"), where)
        elif cls == "Activation":
            act = _activation(cfg.get("activation", "linear"), where)
        elif cls == "ReLU":
            if cfg.get("max_value") is not None or float(cfg.get("negative_slope", 0.0)) != 0.0:
                raise ValueError(f"{where}: expected a plain ReLU, got {cfg}")
            act = nn.ReLU()
        elif cls in ("MaxPooling2D", "AveragePooling2D"):
            if len(shape) != 3:
                raise ValueError(f"{where}: expected a (C, H, W) input, got shape {shape}")
            k = _pair(cfg.get("pool_size", 2))
            s = _pair(cfg.get("strides") or k)
            padding = cfg.get("padding", "valid")
            pads = (0, 0)
            if padding == "same":
                ph, pw = _same_pad(shape[1], k[0], s[0]), _same_pad(shape[2], k[1], s[1])
                if cls != "MaxPooling2D" or ph[0] != ph[1] or pw[0] != pw[1]:
                    raise ValueError(
                        f"{where}: 'same' padding here is asymmetric or averaging; expected 'valid'"
                    )
                pads = (ph[0], pw[0])
            elif padding != "valid":
                raise ValueError(f"{where}: expected padding 'valid' or 'same', got {padding!r}")
            pool_cls = nn.MaxPool2d if cls == "MaxPooling2D" else nn.AvgPool2d
            mods.append(pool_cls(k, s, padding=pads))
            shape = (
                shape[0],
                _conv_out(shape[1], k[0], s[0], 1, 2 * pads[0]),
                _conv_out(shape[2], k[1], s[1], 1, 2 * pads[1]),
            )
            act = None
        elif cls == "GlobalAveragePooling2D":
            if len(shape) != 3:
                raise ValueError(f"{where}: expected a (C, H, W) input, got shape {shape}")
            mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            shape, act = (shape[0],), None
        elif cls == "Flatten":
            if len(shape) == 3:
                ch, hh, ww = shape
                perm = torch.arange(hh * ww * ch).reshape(hh, ww, ch).permute(2, 0, 1).reshape(-1)
                mods.append(nn.Flatten())
                shape = (ch * hh * ww,)
            act = None
        elif cls == "BatchNormalization":
            axis = cfg.get("axis", -1)
            if axis not in (-1, len(shape)):
                raise ValueError(f"{where}: expected axis -1 (channels), got {axis}")
            eps = float(cfg.get("epsilon", 1e-3))
            n = shape[0]
            params = {
                "weight": _get(weights, name, "gamma") if cfg.get("scale", True) else torch.ones(n),
                "bias": _get(weights, name, "beta") if cfg.get("center", True) else torch.zeros(n),
                "running_mean": _get(weights, name, "moving_mean"),
                "running_var": _get(weights, name, "moving_variance"),
            }
            if perm is not None:  # flat features still in Keras' HWC order
                params = {k: v[perm] for k, v in params.items()}
            bn = (nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d)(n, eps=eps)
            bn.load_state_dict({**params, "num_batches_tracked": torch.tensor(0)})
            mods.append(bn)
            act = None
        else:
            raise ValueError(f"{where}: expected one of {', '.join(SUPPORTED_LAYERS)}, got {cls!r}")
        if act is not None:
            mods.append(act)
    if perm is not None:
        raise ValueError(
            "keras model: a Flatten of a (C, H, W) map must be followed by a Dense layer"
        )
    output = "probabilities" if mods and isinstance(mods[-1], nn.Softmax) else "logits"
    if len(first_shape) != 3:
        raise ValueError(f"input_shape: expected an image input (C, H, W), got {first_shape}")
    module = nn.Sequential(*mods).eval()
    c0, h0, w0 = first_shape
    return KerasModel(module, output, (c0, h0, w0))


def _layer_list(config: Any) -> list[dict[str, Any]]:
    """The layer list of a Keras Sequential config (Keras 2.1 list or Keras 2.2+ dict)."""
    if isinstance(config, dict) and config.get("class_name") == "Sequential":
        config = config.get("config")
    elif isinstance(config, dict) and "class_name" in config:
        raise ValueError(f"keras model: expected a Sequential model, got {config['class_name']!r}")
    if isinstance(config, dict):
        config = config.get("layers")
    if not isinstance(config, list):
        raise ValueError("keras model: expected a Sequential config with a list of layers")
    return config


def _read_weights(group: Any) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for raw in group.attrs.get("layer_names", []):
        lname = raw.decode() if isinstance(raw, bytes) else str(raw)
        g = group[lname]
        entry: dict[str, np.ndarray] = {}
        for wraw in g.attrs.get("weight_names", []):
            wname = wraw.decode() if isinstance(wraw, bytes) else str(wraw)
            key = wname.rsplit("/", 1)[-1].split(":", 1)[0]
            entry[key] = np.asarray(g[wname])
        out[lname] = entry
    return out


def load_keras(
    path: str | Path,
    *,
    json_path: str | Path | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> KerasModel:
    """Load a Keras-2 HDF5 model (full, or weights-only plus its JSON) as a torch module.

    Args:
        path: the ``.h5`` file, or the architecture ``.json`` (its weights are then the
            ``.h5`` with the same stem).
        json_path: the architecture JSON for a weights-only ``.h5`` (default: same stem).
        input_shape: ``(C, H, W)`` if the model does not record it.

    Raises:
        ValueError: unreadable file, missing architecture, unsupported layer.
    """
    import h5py  # optional dependency (extra 'keras')

    path = Path(path)
    if path.suffix.lower() == ".json":
        json_path, path = path, path.with_suffix(".h5")
    if not path.is_file():
        raise ValueError(
            f"model: expected a Keras HDF5 weights file at {str(path)!r}, got no such file"
        )
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(
            f"model: expected a readable HDF5 file, got {str(path)!r} ({exc})"
        ) from exc
    with f:
        backend = f.attrs.get("backend", b"tensorflow")
        backend = backend.decode() if isinstance(backend, bytes) else str(backend)
        if backend != "tensorflow":
            raise ValueError(
                f"model: expected a Keras model saved with backend 'tensorflow', got {backend!r}"
            )
        if "model_config" in f.attrs:
            raw = f.attrs["model_config"]
            config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        else:
            jp = Path(json_path) if json_path is not None else path.with_suffix(".json")
            if not jp.is_file():
                raise ValueError(
                    f"model: {str(path)!r} holds weights only; expected its architecture "
                    f"JSON at {str(jp)!r}, got no such file"
                )
            try:
                config = json.loads(jp.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(
                    f"model: expected a Keras JSON architecture in {str(jp)!r}, "
                    f"got unparsable text ({exc})"
                ) from exc
        group = f["model_weights"] if "model_weights" in f else f
        weights = _read_weights(group)
    return keras_to_torch(_layer_list(config), weights, input_shape)
