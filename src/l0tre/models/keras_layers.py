"""One converter per Keras-2 layer kind (NHWC Keras → NCHW torch), used by ``keras_h5``.

Each converter appends the layer's torch modules to a :class:`Build`, updates its running
``(C, H, W)`` / ``(F,)`` shape, and returns the layer's fused activation (or ``None``). Conv
kernels go HWIO → OIHW; a Flatten of a feature map leaves a pending HWC → CHW row order that
the next Dense (or BatchNormalization) applies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["SUPPORTED_LAYERS", "Build", "Layer", "convert_layer"]

Shape = tuple[int, ...]
Weights = Mapping[str, Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class Layer:
    """One Keras layer: its class name, its name, its ``config`` and how errors name it."""

    cls: str
    name: str
    cfg: Mapping[str, Any]

    @property
    def where(self) -> str:
        return f"keras layer {self.name!r} ({self.cls})"


@dataclass
class Build:
    """The modules converted so far, the current activation shape and a pending row order."""

    shape: Shape
    weights: Weights
    mods: list[nn.Module] = field(default_factory=list)
    perm: torch.Tensor | None = None  # HWC → CHW row order for the next Dense


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


def same_pad(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TensorFlow 'same' padding ``(before, after)`` for one spatial dimension."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _conv_out(size: int, k: int, s: int, d: int, pad: int) -> int:
    return (size + pad - d * (k - 1) - 1) // s + 1


def _get(weights: Weights, layer: str, key: str) -> torch.Tensor:
    if layer not in weights or key not in weights[layer]:
        have = sorted(weights.get(layer, {}))
        raise ValueError(f"keras weights: layer {layer!r} needs weight {key!r}, got {have}")
    return torch.from_numpy(np.ascontiguousarray(weights[layer][key], dtype=np.float32))


def _need_map(b: Build, layer: Layer) -> tuple[int, int, int]:
    if len(b.shape) != 3:
        raise ValueError(f"{layer.where}: expected a (C, H, W) input, got shape {b.shape}")
    c, h, w = b.shape
    return c, h, w


def _conv2d(b: Build, layer: Layer) -> nn.Module | None:
    cfg, where = layer.cfg, layer.where
    c, h, w = _need_map(b, layer)
    kernel = _get(b.weights, layer.name, "kernel")  # (kh, kw, in, out)
    kh, kw = _pair(cfg["kernel_size"])
    s, d = _pair(cfg.get("strides", 1)), _pair(cfg.get("dilation_rate", 1))
    padding = cfg.get("padding", "valid")
    if padding == "valid":
        ph, pw = (0, 0), (0, 0)
    elif padding == "same":
        ph, pw = same_pad(h, kh, s[0], d[0]), same_pad(w, kw, s[1], d[1])
    else:
        raise ValueError(f"{where}: expected padding 'valid' or 'same', got {padding!r}")
    sym = (ph[0], pw[0])
    if ph[0] != ph[1] or pw[0] != pw[1]:
        b.mods.append(nn.ZeroPad2d((pw[0], pw[1], ph[0], ph[1])))
        sym = (0, 0)
    conv = nn.Conv2d(c, int(cfg["filters"]), (kh, kw), stride=s, padding=sym, dilation=d,
                     bias=bool(cfg.get("use_bias", True)))
    if tuple(kernel.shape) != (kh, kw, c, conv.out_channels):
        raise ValueError(f"{where}: expected kernel {(kh, kw, c, conv.out_channels)}, "
                         f"got {tuple(kernel.shape)}")
    conv.weight.data.copy_(kernel.permute(3, 2, 0, 1))
    if conv.bias is not None:
        conv.bias.data.copy_(_get(b.weights, layer.name, "bias"))
    b.mods.append(conv)
    b.shape = (conv.out_channels, _conv_out(h, kh, s[0], d[0], sum(ph)),
               _conv_out(w, kw, s[1], d[1], sum(pw)))
    return _activation(cfg.get("activation", "linear"), where)


def _dense(b: Build, layer: Layer) -> nn.Module | None:
    if len(b.shape) != 1:
        raise ValueError(f"{layer.where}: expected a flat input (Flatten first), got shape {b.shape}")
    kernel = _get(b.weights, layer.name, "kernel")  # (in, out)
    lin = nn.Linear(b.shape[0], int(layer.cfg["units"]), bias=bool(layer.cfg.get("use_bias", True)))
    if tuple(kernel.shape) != (b.shape[0], lin.out_features):
        raise ValueError(f"{layer.where}: expected kernel {(b.shape[0], lin.out_features)}, "
                         f"got {tuple(kernel.shape)}")
    w = kernel.t()
    lin.weight.data.copy_(w[:, b.perm] if b.perm is not None else w)
    b.perm = None
    if lin.bias is not None:
        lin.bias.data.copy_(_get(b.weights, layer.name, "bias"))
    b.mods.append(lin)
    b.shape = (lin.out_features,)
    return _activation(layer.cfg.get("activation", "linear"), layer.where)


def _activation_layer(b: Build, layer: Layer) -> nn.Module | None:
    return _activation(layer.cfg.get("activation", "linear"), layer.where)


def _relu(b: Build, layer: Layer) -> nn.Module | None:
    cfg = layer.cfg
    if cfg.get("max_value") is not None or float(cfg.get("negative_slope", 0.0)) != 0.0:
        raise ValueError(f"{layer.where}: expected a plain ReLU, got {dict(cfg)}")
    return nn.ReLU()


def _pool(b: Build, layer: Layer) -> nn.Module | None:
    c, h, w = _need_map(b, layer)
    k = _pair(layer.cfg.get("pool_size", 2))
    s = _pair(layer.cfg.get("strides") or k)
    padding = layer.cfg.get("padding", "valid")
    pads = (0, 0)
    if padding == "same":
        ph, pw = same_pad(h, k[0], s[0]), same_pad(w, k[1], s[1])
        if layer.cls != "MaxPooling2D" or ph[0] != ph[1] or pw[0] != pw[1]:
            raise ValueError(
                f"{layer.where}: 'same' padding here is asymmetric or averaging; expected 'valid'")
        pads = (ph[0], pw[0])
    elif padding != "valid":
        raise ValueError(f"{layer.where}: expected padding 'valid' or 'same', got {padding!r}")
    pool_cls = nn.MaxPool2d if layer.cls == "MaxPooling2D" else nn.AvgPool2d
    b.mods.append(pool_cls(k, s, padding=pads))
    b.shape = (c, _conv_out(h, k[0], s[0], 1, 2 * pads[0]), _conv_out(w, k[1], s[1], 1, 2 * pads[1]))
    return None


def _global_average(b: Build, layer: Layer) -> nn.Module | None:
    c, _, _ = _need_map(b, layer)
    b.mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    b.shape = (c,)
    return None


def _flatten(b: Build, layer: Layer) -> nn.Module | None:
    if len(b.shape) == 3:
        ch, hh, ww = b.shape
        b.perm = torch.arange(hh * ww * ch).reshape(hh, ww, ch).permute(2, 0, 1).reshape(-1)
        b.mods.append(nn.Flatten())
        b.shape = (ch * hh * ww,)
    return None


def _batchnorm(b: Build, layer: Layer) -> nn.Module | None:
    cfg, name = layer.cfg, layer.name
    axis = cfg.get("axis", -1)
    if axis not in (-1, len(b.shape)):
        raise ValueError(f"{layer.where}: expected axis -1 (channels), got {axis}")
    n = b.shape[0]
    params = {
        "weight": _get(b.weights, name, "gamma") if cfg.get("scale", True) else torch.ones(n),
        "bias": _get(b.weights, name, "beta") if cfg.get("center", True) else torch.zeros(n),
        "running_mean": _get(b.weights, name, "moving_mean"),
        "running_var": _get(b.weights, name, "moving_variance"),
    }
    if b.perm is not None:  # flat features still in Keras' HWC order
        params = {k: v[b.perm] for k, v in params.items()}
    bn = (nn.BatchNorm2d if len(b.shape) == 3 else nn.BatchNorm1d)(n, eps=float(cfg.get("epsilon", 1e-3)))
    bn.load_state_dict({**params, "num_batches_tracked": torch.tensor(0)})
    b.mods.append(bn)
    return None


def _skip(b: Build, layer: Layer) -> nn.Module | None:
    return None


_CONVERTERS: dict[str, Callable[[Build, Layer], nn.Module | None]] = {
    "InputLayer": _skip,
    "Conv2D": _conv2d,
    "Dense": _dense,
    "Activation": _activation_layer,
    "ReLU": _relu,
    "MaxPooling2D": _pool,
    "AveragePooling2D": _pool,
    "GlobalAveragePooling2D": _global_average,
    "Flatten": _flatten,
    "Dropout": _skip,
    "BatchNormalization": _batchnorm,
}
SUPPORTED_LAYERS = tuple(_CONVERTERS)


def convert_layer(b: Build, layer: Layer) -> None:
    """Append ``layer``'s modules (and its fused activation) to ``b``.

    Raises:
        ValueError: an unsupported layer or option, or weights that do not fit.
    """
    if layer.cfg.get("data_format", "channels_last") != "channels_last":
        raise ValueError(f"{layer.where}: expected data_format 'channels_last', "
                         f"got {layer.cfg['data_format']!r}")
    convert = _CONVERTERS.get(layer.cls)
    if convert is None:
        raise ValueError(f"{layer.where}: expected one of {', '.join(SUPPORTED_LAYERS)}, "
                         f"got {layer.cls!r}")
    act = convert(b, layer)
    if act is not None:
        b.mods.append(act)
