"""An independent numpy forward pass for Keras-2 Sequential models (NHWC, TF semantics).

Used only by the tests, to check the torch conversion against the Keras definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def _pads(size: int, k: int, s: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _windows(
    x: np.ndarray, k: tuple[int, int], s: tuple[int, int], same: bool, fill: float
) -> np.ndarray:
    """``(N, H, W, C)`` → ``(N, H', W', C, kh, kw)`` patches."""
    if same:
        ph, pw = _pads(x.shape[1], k[0], s[0]), _pads(x.shape[2], k[1], s[1])
        x = np.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=fill)
    win = np.lib.stride_tricks.sliding_window_view(x, k, axis=(1, 2))
    return win[:, :: s[0], :: s[1]]


def _act(x: np.ndarray, name: str) -> np.ndarray:
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if name == "linear":
        return x
    raise NotImplementedError(name)


def forward(
    layers: list[dict[str, Any]],
    weights: Mapping[str, Mapping[str, np.ndarray]],
    x_nhwc: np.ndarray,
) -> np.ndarray:
    """Run the Keras layer list on ``x_nhwc`` ``(N, H, W, C)`` float64; returns ``(N, K)``."""
    x = x_nhwc.astype(np.float64)
    for layer in layers:
        cls, cfg = layer["class_name"], layer["config"]
        w = weights.get(cfg.get("name", ""), {})
        if cls == "Conv2D":
            k = tuple(cfg["kernel_size"])
            s = tuple(cfg.get("strides", (1, 1)))
            win = _windows(x, k, s, cfg["padding"] == "same", 0.0)
            x = np.einsum("nhwcij,ijco->nhwo", win, w["kernel"].astype(np.float64)) + w["bias"]
            x = _act(x, cfg["activation"])
        elif cls == "MaxPooling2D":
            k = tuple(cfg["pool_size"])
            s = tuple(cfg.get("strides") or k)
            x = _windows(x, k, s, cfg["padding"] == "same", -np.inf).max(axis=(4, 5))
        elif cls == "Flatten":
            x = x.reshape(x.shape[0], -1)
        elif cls == "Dense":
            x = _act(x @ w["kernel"].astype(np.float64) + w["bias"], cfg["activation"])
        elif cls == "Activation":
            x = _act(x, cfg["activation"])
        elif cls == "BatchNormalization":
            eps = cfg.get("epsilon", 1e-3)
            x = (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + eps) * w["gamma"] + w[
                "beta"
            ]
        elif cls == "Dropout":
            continue
        else:
            raise NotImplementedError(cls)
    return x


def read_h5_weights(group: Any) -> dict[str, dict[str, np.ndarray]]:
    """``{layer: {"kernel": ..., "bias": ...}}`` straight from an h5py group."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for lname in group.attrs["layer_names"]:
        lname = lname.decode()
        g = group[lname]
        out[lname] = {
            wn.decode().split("/")[-1].split(":")[0]: np.asarray(g[wn.decode()])
            for wn in g.attrs["weight_names"]
        }
    return out
