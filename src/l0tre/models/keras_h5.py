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
from torch import nn

from .keras_layers import SUPPORTED_LAYERS, Build, Layer, Shape, convert_layer

__all__ = ["SUPPORTED_LAYERS", "KerasModel", "keras_to_torch", "load_keras"]

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
    shape = _first_shape(layers, input_shape)
    build = Build(shape, weights)
    for layer in layers:
        cls, cfg = str(layer.get("class_name", "?")), layer.get("config", {})
        convert_layer(build, Layer(cls, str(cfg.get("name", cls)), cfg))
    if build.perm is not None:
        raise ValueError(
            "keras model: a Flatten of a (C, H, W) map must be followed by a Dense layer"
        )
    mods = build.mods
    output = "probabilities" if mods and isinstance(mods[-1], nn.Softmax) else "logits"
    if len(shape) != 3:
        raise ValueError(f"input_shape: expected an image input (C, H, W), got {shape}")
    c0, h0, w0 = shape
    return KerasModel(nn.Sequential(*mods).eval(), output, (c0, h0, w0))


def _first_shape(layers: list[dict[str, Any]], input_shape: tuple[int, ...] | None) -> Shape:
    """``input_shape``, else the first layer's ``batch_input_shape`` as ``(C, H, W)``."""
    if input_shape is not None:
        return tuple(input_shape)
    bis = layers[0].get("config", {}).get("batch_input_shape") if layers else None
    if bis is None:
        raise ValueError("input_shape: the Keras model has no batch_input_shape; pass (C, H, W)")
    dims = [int(v) for v in bis[1:]]
    return (dims[2], dims[0], dims[1]) if len(dims) == 3 else tuple(dims)


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
