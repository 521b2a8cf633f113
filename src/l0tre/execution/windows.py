"""Window geometry of the incremental chain: which part of a feature map a changed pixel reaches.

A :class:`Window` holds new values of a map at an origin; :func:`window_cells` gives the map
positions a window covers (a scratch slot for those outside), :func:`paste_clipped` writes a
window into a channels-last map, and ``_Spatial`` / ``_spatial_params`` describe a windowed layer
(kernel, stride, padding, window and patch sizes). Used by :mod:`.incremental` and :mod:`.pairs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Window", "paste_clipped", "window_cells"]

_Pair = tuple[int, int]


def _pair(v: int | tuple[int, ...]) -> _Pair:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


@dataclass(frozen=True)
class _Spatial:
    """A windowed layer: geometry of its input/output windows and of the base map margins."""

    index: int  # position in the Sequential
    module: nn.Module
    kernel: _Pair
    stride: _Pair
    padding: _Pair
    win_in: _Pair  # window size at the layer input
    win_out: _Pair  # window size at the layer output
    patch: _Pair  # input patch size: (win_out - 1)·stride + kernel
    map_in: _Pair  # real input map size (H, W)
    map_out: _Pair
    margin_lo: _Pair  # zero margin of the cached input map before row/col 0
    margin_hi: _Pair

    def origin(self, r0: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Output-window origin of input windows at ``r0``/``c0`` (real-map coordinates)."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return (torch.div(r0 + ph - kh + sh, sh, rounding_mode="floor"),
                torch.div(c0 + pw - kw + sw, sw, rounding_mode="floor"))

    def run(self, patch: torch.Tensor) -> torch.Tensor:
        m = self.module
        if isinstance(m, nn.Conv2d):
            return F.conv2d(patch, m.weight, m.bias, stride=self.stride, padding=0, groups=m.groups)
        if isinstance(m, nn.MaxPool2d):
            return F.max_pool2d(patch, self.kernel, self.stride)
        return F.avg_pool2d(patch, self.kernel, self.stride)



@dataclass
class Window:
    """New values ``(B, C, wh, ww)`` of a feature map at rows ``r0 …`` / cols ``c0 …`` ``(B,)``
    (real-map coordinates; may reach outside the map)."""

    values: torch.Tensor
    r0: torch.Tensor
    c0: torch.Tensor


def window_cells(r0: torch.Tensor, c0: torch.Tensor, win: _Pair, size: _Pair) -> torch.Tensor:
    """``(B, wh·ww)`` linear positions in a map of ``size`` of the windows of size ``win`` at
    ``r0``/``c0`` ``(B,)``; positions outside the map give ``H·W`` (a scratch slot)."""
    dev = r0.device
    rr = r0.unsqueeze(1) + torch.arange(win[0], device=dev)  # (B, wh)
    cc = c0.unsqueeze(1) + torch.arange(win[1], device=dev)
    ok = ((rr >= 0) & (rr < size[0])).unsqueeze(2) & ((cc >= 0) & (cc < size[1])).unsqueeze(1)
    return torch.where(ok, rr.unsqueeze(2) * size[1] + cc.unsqueeze(1), size[0] * size[1]).view(r0.shape[0], -1)


def _inside(w: Window, size: _Pair) -> torch.Tensor:
    """``(B, 1, wh, ww)`` mask (``w``'s dtype): which window positions lie inside a map of ``size``."""
    b, _, wh, ww = w.values.shape
    cells = window_cells(w.r0, w.c0, (wh, ww), size)
    return (cells < size[0] * size[1]).view(b, 1, wh, ww).to(w.values.dtype)


def paste_clipped(
    flat: torch.Tensor, w: Window, size: _Pair, o_r: torch.Tensor | int = 0, o_c: torch.Tensor | int = 0,
) -> None:
    """Write window ``w`` into ``flat`` ``(B, H·W + 1, C)`` (a channels-last map of ``size`` whose
    origin is at ``o_r``/``o_c`` in the window's coordinates, plus a scratch slot): positions
    outside the map go to the scratch slot (no data-dependent shapes, so no device
    synchronisation)."""
    b, ch, wh, ww = w.values.shape
    lin = window_cells(w.r0 - o_r, w.c0 - o_c, (wh, ww), size)
    rows = torch.arange(b, device=lin.device).view(b, 1).expand(b, wh * ww)
    flat[rows, lin] = w.values.permute(0, 2, 3, 1).reshape(b, wh * ww, ch)

def _spatial_params(layer: nn.Module) -> tuple[_Pair, _Pair, _Pair] | None:
    """(kernel, stride, padding) of a supported spatial layer, else ``None``."""
    if isinstance(layer, nn.Conv2d):
        if isinstance(layer.padding, str) or layer.padding_mode != "zeros" or _pair(layer.dilation) != (1, 1):
            return None
        k, s, p = _pair(layer.kernel_size), _pair(layer.stride), _pair(layer.padding)
    elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        if isinstance(layer, nn.MaxPool2d) and (_pair(layer.dilation) != (1, 1) or layer.return_indices):
            return None
        if layer.ceil_mode or _pair(layer.padding) != (0, 0):
            return None
        k = _pair(layer.kernel_size)
        s = _pair(layer.stride if layer.stride is not None else layer.kernel_size)
        p = (0, 0)
        if isinstance(layer, nn.AvgPool2d) and layer.divisor_override is not None:
            return None
    else:
        return None
    if k[0] < s[0] or k[1] < s[1]:
        return None  # a window could fall between two patches
    return k, s, p
