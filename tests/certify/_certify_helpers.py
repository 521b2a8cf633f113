"""Shared helpers for the certification tests: tiny networks and an exact MILP oracle.

The oracle is independent of :mod:`l0tre.certify`: every layer of a small ``nn.Sequential``
is turned into an explicit dense matrix by probing the torch layer itself, interval bounds
for the big-M constants are recomputed here with numpy, and ``scipy.optimize.milp`` (HiGHS)
minimises each margin exactly over the box.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix
from torch import nn


def mlp(seed: int, shape: tuple[int, int, int] = (1, 3, 3), hidden: tuple[int, ...] = (8, 8),
        classes: int = 3) -> nn.Sequential:
    """A small ReLU MLP on ``shape`` inputs with random weights."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    width = shape[0] * shape[1] * shape[2]
    for h in hidden:
        lin = nn.Linear(width, h)
        _init(lin, g)
        layers += [lin, nn.ReLU()]
        width = h
    out = nn.Linear(width, classes)
    _init(out, g)
    layers.append(out)
    return nn.Sequential(*layers).eval()


def conv_net(seed: int, pool: bool = True) -> nn.Sequential:
    """A tiny conv net on ``(1, 4, 4)``: conv(2, 2x2) → ReLU → [maxpool 2, stride 1] → linear."""
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(1, 3, 2)
    _init(conv, g, scale=1.5)
    layers: list[nn.Module] = [conv, nn.ReLU()]
    side = 3
    if pool:
        layers.append(nn.MaxPool2d(2, stride=1))
        side = 2
    lin1 = nn.Linear(3 * side * side, 6)
    lin2 = nn.Linear(6, 3)
    _init(lin1, g)
    _init(lin2, g)
    layers += [nn.Flatten(), lin1, nn.ReLU(), lin2]
    return nn.Sequential(*layers).eval()


def _init(layer: nn.Module, g: torch.Generator, scale: float = 1.0) -> None:
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale / max(1.0, p.shape[-1] ** 0.5))


# --- the exact oracle -----------------------------------------------------------------------

@dataclass
class _Layer:
    kind: str  # "affine", "relu", "maxpool"
    weight: np.ndarray | None = None  # (out, in) for affine
    bias: np.ndarray | None = None
    windows: list[list[int]] | None = None  # maxpool: input indices per output


def _layers(model: nn.Sequential, in_shape: tuple[int, ...]) -> list[_Layer]:
    """Dense per-layer descriptions obtained by probing the torch layers."""
    out: list[_Layer] = []
    shape = in_shape
    for layer in copy.deepcopy(model).double():
        n_in = int(np.prod(shape))
        with torch.no_grad():
            if isinstance(layer, nn.ReLU):
                out.append(_Layer("relu"))
                continue
            if isinstance(layer, nn.MaxPool2d):
                idx = torch.arange(n_in, dtype=torch.float64).view(1, *shape)
                c, h, w = shape
                k, s = layer.kernel_size, layer.stride
                k = k if isinstance(k, int) else k[0]
                s = s if isinstance(s, int) else s[0]
                wins = []
                oh, ow = (h - k) // s + 1, (w - k) // s + 1
                for ci in range(c):
                    for i in range(oh):
                        for j in range(ow):
                            wins.append([int(idx[0, ci, i * s + a, j * s + b])
                                         for a in range(k) for b in range(k)])
                out.append(_Layer("maxpool", windows=wins))
                shape = (c, oh, ow)
                continue
            basis = torch.eye(n_in, dtype=torch.float64).view(n_in, *shape)
            zero = torch.zeros((1, *shape), dtype=torch.float64)
            lay = layer
            b = lay(zero).reshape(-1).numpy()
            w = (lay(basis).reshape(n_in, -1).numpy() - b).T
            out.append(_Layer("affine", w, b))
            shape = tuple(lay(zero).shape[1:])
    return out


def _interval(layers: list[_Layer], lo: np.ndarray, hi: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Interval bounds of every layer's *input*, plus the output's."""
    res = []
    for lay in layers:
        res.append((lo, hi))
        if lay.kind == "affine":
            assert lay.weight is not None and lay.bias is not None
            c, r = (lo + hi) / 2, (hi - lo) / 2
            c2, r2 = lay.weight @ c + lay.bias, np.abs(lay.weight) @ r
            lo, hi = c2 - r2 - 1e-9, c2 + r2 + 1e-9
        elif lay.kind == "relu":
            lo, hi = np.maximum(lo, 0), np.maximum(hi, 0)
        else:
            assert lay.windows is not None
            lo = np.array([max(lo[i] for i in w) for w in lay.windows])
            hi = np.array([max(hi[i] for i in w) for w in lay.windows])
    res.append((lo, hi))
    return res


def milp_min_margins(model: nn.Sequential, lo: np.ndarray, hi: np.ndarray, label: int,
                     in_shape: tuple[int, ...]) -> list[tuple[float, np.ndarray | None]]:
    """Exact ``min_{x ∈ [lo, hi]} z_label - z_k`` for every ``k ≠ label`` (``+inf`` and
    ``None`` for ``k = label``), with the minimising input (flattened)."""
    layers = _layers(model, in_shape)
    bounds = _interval(layers, lo.reshape(-1).astype(np.float64), hi.reshape(-1).astype(np.float64))
    # variables: one block per layer value (input first), plus binaries
    var_lo: list[float] = []
    var_hi: list[float] = []
    integ: list[int] = []
    rows: list[tuple[dict[int, float], float, float]] = []

    def new_vars(lb: np.ndarray, ub: np.ndarray, binary: bool = False) -> list[int]:
        start = len(var_lo)
        var_lo.extend(lb.tolist())
        var_hi.extend(ub.tolist())
        integ.extend([1 if binary else 0] * len(lb))
        return list(range(start, start + len(lb)))

    cur = new_vars(*bounds[0])
    for li, lay in enumerate(layers):
        blo, bhi = bounds[li + 1]
        if lay.kind == "affine":
            assert lay.weight is not None and lay.bias is not None
            nxt = new_vars(blo, bhi)
            for o in range(lay.weight.shape[0]):
                coeffs = {cur[i]: float(lay.weight[o, i]) for i in range(len(cur)) if lay.weight[o, i] != 0}
                coeffs[nxt[o]] = coeffs.get(nxt[o], 0.0) - 1.0
                rows.append((coeffs, -float(lay.bias[o]), -float(lay.bias[o])))
        elif lay.kind == "relu":
            ilo, ihi = bounds[li]
            nxt = new_vars(blo, bhi)
            for i in range(len(cur)):
                x, y = cur[i], nxt[i]
                if ilo[i] >= 0:
                    rows.append(({y: 1.0, x: -1.0}, 0.0, 0.0))
                elif ihi[i] <= 0:
                    rows.append(({y: 1.0}, 0.0, 0.0))
                else:
                    (d,) = new_vars(np.zeros(1), np.ones(1), binary=True)
                    rows.append(({y: 1.0, x: -1.0}, 0.0, np.inf))  # y >= x
                    # y <= x - l (1 - d)  <=>  y - x - l d <= -l
                    rows.append(({y: 1.0, x: -1.0, d: -float(ilo[i])}, -np.inf, -float(ilo[i])))
                    rows.append(({y: 1.0, d: -float(ihi[i])}, -np.inf, 0.0))  # y <= u d
        else:
            assert lay.windows is not None
            ilo, ihi = bounds[li]
            nxt = new_vars(blo, bhi)
            for o, win in enumerate(lay.windows):
                y = nxt[o]
                ds = new_vars(np.zeros(len(win)), np.ones(len(win)), binary=True)
                umax = max(ihi[i] for i in win)
                for i, d in zip(win, ds, strict=True):
                    rows.append(({y: 1.0, cur[i]: -1.0}, 0.0, np.inf))  # y >= x_i
                    # y <= x_i + (umax - l_i)(1 - d)
                    m = float(umax - ilo[i])
                    rows.append(({y: 1.0, cur[i]: -1.0, d: m}, -np.inf, m))
                rows.append(({d: 1.0 for d in ds}, 1.0, 1.0))
        cur = nxt
    a = lil_matrix((len(rows), len(var_lo)))
    rlo, rhi = [], []
    for r, (coeffs, lb, ub) in enumerate(rows):
        for j, v in coeffs.items():
            a[r, j] = v
        rlo.append(lb)
        rhi.append(ub)
    cons = LinearConstraint(a.tocsr(), np.array(rlo), np.array(rhi))
    var_bounds = Bounds(np.array(var_lo), np.array(var_hi))
    n_in = len(bounds[0][0])
    results: list[tuple[float, np.ndarray | None]] = []
    for k in range(len(cur)):
        if k == label:
            results.append((float("inf"), None))
            continue
        c = np.zeros(len(var_lo))
        c[cur[label]] += 1.0
        c[cur[k]] -= 1.0
        res = milp(c, constraints=cons, integrality=np.array(integ), bounds=var_bounds,
                   options={"mip_rel_gap": 1e-9, "presolve": True})
        if res.status != 0 or res.x is None:
            raise RuntimeError(f"MILP failed: {res.message}")
        results.append((float(res.fun), np.asarray(res.x[:n_in])))
    return results


def forward_margin(model: nn.Module, x: torch.Tensor, label: int) -> torch.Tensor:
    """``min_{k≠label} z_label - z_k`` of a plain float64 forward pass, ``(N,)``."""
    m = copy.deepcopy(model).double()
    with torch.no_grad():
        z = m(x.double())
    marg = z[:, label:label + 1] - z
    marg[:, label] = float("inf")
    return marg.min(1).values


# --- a zoo of small models for sampling tests -------------------------------------------------

class ShortcutLike(nn.Module):
    """Option-A style shortcut: subsample 2x and zero-pad channels (a generic linear map)."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = ShortcutLike((cout - cin) // 2) if stride != 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.nn.functional.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    """``(N, 2, 6, 6)`` → conv-BN-ReLU → two residual blocks (one with a shortcut module) →
    global average pool → linear (4 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.block1 = ResBlock(4, 4, 1)
        self.block2 = ResBlock(4, 8, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn(self.conv(x)))
        out = self.block2(self.block1(out))
        return self.fc(torch.flatten(self.pool(out), 1))


class Normalised(nn.Module):
    """A normalisation step with buffers in front of a model."""

    def __init__(self, inner: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner((x - self.mean) / self.std)


class FunctionalNet(nn.Module):
    """Uses functional ops: F.relu, F.max_pool2d, F.avg_pool2d, view(size(0), -1), dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.relu(self.conv(x))
        x = torch.nn.functional.max_pool2d(x, 2)
        x = torch.nn.functional.avg_pool2d(self.conv2(x) * 0.5 + 0.1, kernel_size=2, stride=1,
                                           padding=0)
        x = self.drop(x)
        x = x.view(x.size(0), -1)
        return self.fc(x)


def randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    """Give every batch norm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
    return model.eval()


def zoo() -> dict[str, tuple[nn.Module, tuple[int, int, int], object]]:
    """name → (model, input shape, preprocessing)."""
    torch.manual_seed(0)
    bn_net = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2, stride=1),
        nn.Conv2d(4, 4, 2, stride=2, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(),
        nn.Linear(6, 3),
    )
    pool_net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(3, 3, 2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
        nn.Linear(3, 3),
    )
    return {
        "mlp": (mlp(1), (1, 3, 3), None),
        "conv_pool": (conv_net(2), (1, 4, 4), None),
        "bn_pool": (randomise_bn(bn_net, 3), (2, 6, 6), None),
        "pool_pad_ceil": (pool_net.eval(), (1, 6, 6), None),
        "resnet": (randomise_bn(TinyResNet(), 4), (2, 6, 6), ((0.4, 0.5), (0.2, 0.3))),
        "normalised": (Normalised(conv_net(5), [0.3], [0.25]).eval(), (1, 4, 4), None),
        "functional": (FunctionalNet().eval(), (1, 4, 4), ((0.5,), (0.5,))),
    }
