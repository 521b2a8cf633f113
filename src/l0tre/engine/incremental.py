"""Incremental evaluation of single-pixel perturbations through the leading spatial layers.

A change at one pixel only affects a small *window* of every feature map until the receptive
field has spread over most of the map. For a ``torch.nn.Sequential`` model that starts with
convolutions (any stride, no dilation, zero padding), max / average pooling (no padding) and
elementwise layers (ReLU, BatchNorm2d in eval, …), the maps of each original input are
computed once (*base*), and for every perturbed row only the window is recomputed, layer by
layer, from a fixed-size patch of the base map with the previous window pasted in. The chain
stops before the first layer whose window would cover more than half of its output map (or
that is not supported); there the base map with the window pasted is handed to the rest of
the network as usual.

For the paper's MNIST CNN (conv-conv-pool-conv-conv-pool-fc) the chain covers the first five
spatial layers: the full forward costs ≈ 10 M multiply-adds, an incremental row ≈ 3 M.

The result is the same function up to floating-point summation order; the engine re-checks
every decision whose margin is within ``BOUNDARY_TOL`` of zero with the plain forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..classifier import Classifier

__all__ = ["BOUNDARY_TOL", "IncrementalPrefix", "IncrementalCaches"]

BOUNDARY_TOL = 1e-3

_ELEMENTWISE = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout, nn.GELU, nn.SiLU, nn.BatchNorm2d,
)
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

    def run(self, patch: torch.Tensor) -> torch.Tensor:
        m = self.module
        if isinstance(m, nn.Conv2d):
            return F.conv2d(patch, m.weight, m.bias, stride=self.stride, padding=0, groups=m.groups)
        if isinstance(m, nn.MaxPool2d):
            return F.max_pool2d(patch, self.kernel, self.stride)
        return F.avg_pool2d(patch, self.kernel, self.stride)


@dataclass
class IncrementalCaches:
    """Per-input base maps of one shard.

    ``inputs[i]``: the input map of spatial layer ``i`` ``(N, C_i, H_i + margins, W_i + margins)``
    (zero outside the real map); ``rest``: the input of the first layer after the chain
    ``(N, C, H, W)``; ``pixels``: the normalised input ``(N, C, H·W)`` (for element features).
    """

    inputs: list[torch.Tensor]
    rest: torch.Tensor
    pixels: torch.Tensor


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


@dataclass
class IncrementalPrefix:
    """See the module docstring. Build with :meth:`build` (``None`` when not applicable)."""

    model: Classifier
    modules: list[nn.Module]  # the chain (spatial + elementwise), in order
    spatial: list[_Spatial]
    rest: nn.Module
    channels: int  # input channels
    chunk: int = 0  # rows per call inside :meth:`outputs` (0: all at once)

    @property
    def depth(self) -> int:
        """Number of leading modules evaluated incrementally."""
        return len(self.modules)

    @staticmethod
    def build(model: Classifier, shape: tuple[int, int, int], max_share: float = 0.5) -> IncrementalPrefix | None:
        """The chain for ``model`` on inputs of ``shape`` ``(C, H, W)``; ``None`` when no spatial
        layer can be windowed. ``max_share``: stop before a layer whose output window would cover
        more than this share of its output map."""
        seq = model.modules()
        if not isinstance(seq, nn.Sequential) or seq.training:
            return None
        c, h, w = shape
        mods: list[nn.Module] = []
        spatial: list[_Spatial] = []
        win: _Pair = (1, 1)
        size: _Pair = (h, w)
        lo: _Pair = (0, 0)  # smallest / largest window start (real-map coordinates)
        hi: _Pair = (h - 1, w - 1)
        for i, layer in enumerate(seq):
            if isinstance(layer, _ELEMENTWISE):
                mods.append(layer)
                continue
            params = _spatial_params(layer)
            if params is None:
                break
            k, s, p = params
            out_size = tuple((size[d] + 2 * p[d] - k[d]) // s[d] + 1 for d in (0, 1))
            if min(out_size) < 1:
                break
            win_out = tuple(_ceil_div(win[d] + k[d] - 1, s[d]) for d in (0, 1))
            if win_out[0] * win_out[1] > max_share * out_size[0] * out_size[1]:
                break
            patch = tuple((win_out[d] - 1) * s[d] + k[d] for d in (0, 1))
            o_lo = tuple(_ceil_div(lo[d] + p[d] - k[d] + 1, s[d]) for d in (0, 1))
            o_hi = tuple(_ceil_div(hi[d] + p[d] - k[d] + 1, s[d]) for d in (0, 1))
            m_lo = tuple(max(0, -(o_lo[d] * s[d] - p[d])) for d in (0, 1))
            m_hi = tuple(max(0, o_hi[d] * s[d] - p[d] + patch[d] - size[d]) for d in (0, 1))
            spatial.append(_Spatial(
                index=i, module=layer, kernel=k, stride=s, padding=p, win_in=win,
                win_out=(win_out[0], win_out[1]), patch=(patch[0], patch[1]), map_in=size,
                map_out=(out_size[0], out_size[1]), margin_lo=(m_lo[0], m_lo[1]), margin_hi=(m_hi[0], m_hi[1]),
            ))
            mods.append(layer)
            win, size = (win_out[0], win_out[1]), (out_size[0], out_size[1])
            lo, hi = (o_lo[0], o_lo[1]), (o_hi[0], o_hi[1])
        if not spatial:
            return None
        rest = nn.Sequential(*list(seq)[len(mods):])
        return IncrementalPrefix(model=model, modules=mods, spatial=spatial, rest=rest, channels=c)

    # -- base maps ------------------------------------------------------------------------------
    @torch.no_grad()
    def base(self, x0: torch.Tensor) -> IncrementalCaches:
        """Base maps of the inputs ``x0`` ``(N, C, H, W)`` (pixel space), stored channels-last
        (``(N, H, W, C)``) so that patches are gathered as whole rows of ``C`` values."""
        z = self.model._normalise(x0.to(self.model.device, self.model.dtype))
        pixels = z.reshape(z.shape[0], z.shape[1], -1)
        inputs: list[torch.Tensor] = []
        si = 0
        for layer in self.modules:
            if si < len(self.spatial) and layer is self.spatial[si].module:
                sp = self.spatial[si]
                padded = F.pad(z, [sp.margin_lo[1], sp.margin_hi[1], sp.margin_lo[0], sp.margin_hi[0]])
                inputs.append(padded.permute(0, 2, 3, 1).contiguous())
                si += 1
            z = layer(z)
        return IncrementalCaches(inputs=inputs, rest=z.permute(0, 2, 3, 1).contiguous(), pixels=pixels)

    # -- perturbed rows -------------------------------------------------------------------------
    @torch.no_grad()
    def outputs(
        self, caches: IncrementalCaches, a: torch.Tensor, pixel: torch.Tensor,
        values: torch.Tensor, channel: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw model outputs ``(B, K)`` for single-feature perturbations.

        Args:
            caches: from :meth:`base` for the shard's inputs.
            a: ``(B,)`` row → input (index into the caches).
            pixel: ``(B,)`` spatial index ``h·W + w`` of the changed pixel.
            values: ``(B, Cf)`` new pixel-space values (all channels, or one with ``channel``).
            channel: ``(B,)`` channel of an element feature, or ``None`` for pixel features.
        """
        step = self.chunk if self.chunk > 0 else max(1, a.shape[0])
        if a.shape[0] <= step:
            return self._outputs(caches, a, pixel, values, channel)
        parts = [
            self._outputs(caches, a[i : i + step], pixel[i : i + step], values[i : i + step],
                          None if channel is None else channel[i : i + step])
            for i in range(0, a.shape[0], step)
        ]
        return torch.cat(parts)

    def _outputs(
        self, caches: IncrementalCaches, a: torch.Tensor, pixel: torch.Tensor,
        values: torch.Tensor, channel: torch.Tensor | None,
    ) -> torch.Tensor:
        dev = a.device
        b = a.shape[0]
        w_img = self.spatial[0].map_in[1]
        r0, c0 = pixel // w_img, pixel % w_img
        new = self._normalise_values(values, channel)
        if channel is None:
            win = new.view(b, -1, 1, 1)
        else:
            win = caches.pixels[a, :, pixel].clone()  # (B, C)
            win[torch.arange(b, device=dev), channel] = new[:, 0]
            win = win.view(b, -1, 1, 1)
        si = 0
        for layer in self.modules:
            if si < len(self.spatial) and layer is self.spatial[si].module:
                win, r0, c0 = self._spatial_step(self.spatial[si], caches.inputs[si], win, r0, c0, a)
                si += 1
            else:
                win = layer(win)
        out = self._paste_rest(caches.rest, win, r0, c0, a)
        result = self.rest(out)
        if not isinstance(result, torch.Tensor) or result.dim() != 2:
            raise ValueError("model output: expected shape (N, classes) from the incremental path")
        return result

    @staticmethod
    def _spatial_step(
        sp: _Spatial, base: torch.Tensor, win: torch.Tensor, r0: torch.Tensor, c0: torch.Tensor, a: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Window at the output of ``sp`` from the window ``win`` ``(B, C, wh, ww)`` at rows/cols
        starting ``r0``/``c0`` of its input map (cached channels-last with margins in ``base``
        ``(N, Hm, Wm, C)``)."""
        dev = win.device
        b, ch = win.shape[0], win.shape[1]
        (kh, kw), (sh, sw), (ph, pw) = sp.kernel, sp.stride, sp.padding
        wh, ww = sp.win_in
        hm, wm = base.shape[1], base.shape[2]
        # positions outside the real input map read the layer's zero padding
        ar_h, ar_w = torch.arange(wh, device=dev), torch.arange(ww, device=dev)
        rr = r0.unsqueeze(1) + ar_h
        cc = c0.unsqueeze(1) + ar_w
        inside = ((rr >= 0) & (rr < sp.map_in[0])).unsqueeze(2) & ((cc >= 0) & (cc < sp.map_in[1])).unsqueeze(1)
        win_rows = win.permute(0, 2, 3, 1) * inside.unsqueeze(3).to(win.dtype)  # (B, wh, ww, C)
        o_r = torch.div(r0 + ph - kh + sh, sh, rounding_mode="floor")
        o_c = torch.div(c0 + pw - kw + sw, sw, rounding_mode="floor")
        p_r, p_c = o_r * sh - ph, o_c * sw - pw  # patch origin (real-map coordinates)
        hp, wp = sp.patch
        rows = (p_r + sp.margin_lo[0]).unsqueeze(1) + torch.arange(hp, device=dev)  # (B, hp)
        cols = (p_c + sp.margin_lo[1]).unsqueeze(1) + torch.arange(wp, device=dev)
        lin = (a.view(b, 1, 1) * hm + rows.unsqueeze(2)) * wm + cols.unsqueeze(1)  # (B, hp, wp)
        patch = base.view(-1, ch).index_select(0, lin.view(-1)).view(b, hp * wp, ch)
        pos = ((r0 - p_r).view(b, 1, 1) + ar_h.view(1, wh, 1)) * wp + (c0 - p_c).view(b, 1, 1) + ar_w.view(1, 1, ww)
        bi = torch.arange(b, device=dev).view(b, 1).expand(b, wh * ww)
        patch[bi, pos.view(b, -1)] = win_rows.reshape(b, wh * ww, ch)
        return sp.run(patch.view(b, hp, wp, ch).permute(0, 3, 1, 2)), o_r, o_c

    @staticmethod
    def _paste_rest(
        rest: torch.Tensor, win: torch.Tensor, r0: torch.Tensor, c0: torch.Tensor, a: torch.Tensor,
    ) -> torch.Tensor:
        """The base map ``rest[a]`` (cached ``(N, H, W, C)``) with the real-map part of each
        window ``(B, C, wh, ww)`` pasted; returned ``(B, C, H, W)`` in channels-last memory."""
        dev = win.device
        b, ch, wh, ww = win.shape
        h, w = rest.shape[1], rest.shape[2]
        out = rest.index_select(0, a)  # (B, H, W, C)
        rr = r0.unsqueeze(1) + torch.arange(wh, device=dev)  # (B, wh)
        cc = c0.unsqueeze(1) + torch.arange(ww, device=dev)
        ok = ((rr >= 0) & (rr < h)).unsqueeze(2) & ((cc >= 0) & (cc < w)).unsqueeze(1)  # (B, wh, ww)
        lin = (rr.unsqueeze(2) * w + cc.unsqueeze(1)).view(b, -1)
        bi, ji = ok.view(b, -1).nonzero(as_tuple=True)
        out.view(b, h * w, ch)[bi, lin[bi, ji]] = win.permute(0, 2, 3, 1).reshape(b, wh * ww, ch)[bi, ji]
        return out.permute(0, 3, 1, 2)

    def _normalise_values(self, values: torch.Tensor, channel: torch.Tensor | None) -> torch.Tensor:
        v = values.to(self.model.device, self.model.dtype)
        pre = self.model.preprocessing
        if pre is None:
            return v
        mean = torch.tensor(pre.mean, dtype=v.dtype, device=v.device)
        std = torch.tensor(pre.std, dtype=v.dtype, device=v.device)
        if channel is None:
            return (v - mean) / std
        return (v - mean[channel].unsqueeze(1)) / std[channel].unsqueeze(1)
