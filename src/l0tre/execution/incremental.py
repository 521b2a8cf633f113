"""Incremental evaluation of single-pixel perturbations through the leading spatial layers.

A change at one pixel only affects a small *window* of every feature map until the receptive
field has spread over most of the map. For a ``torch.nn.Sequential`` model that starts with
convolutions (any stride, no dilation, zero padding), max / average pooling (no padding) and
elementwise layers (ReLU, BatchNorm2d in eval, …), the maps of each original input are
computed once (*base*), and for every perturbed row only the window is recomputed, layer by
layer, from a fixed-size patch of the base map with the previous window pasted in. The chain
stops before the first layer whose window would cover more than 80 % of its output map (or
that is not supported); there the base map with the window pasted is handed to the rest of
the network as usual.

For the paper's MNIST CNN (conv-conv-pool-conv-conv-pool-fc) the chain covers the four convs and
the first pool: the full forward costs ≈ 10 M multiply-adds, an incremental row ≈ 2.7 M (the
last conv's window still covers 7×7 of its 8×8 map, measured ≈ 8 % faster than running it whole).

The result is the same function up to floating-point summation order; the engine re-checks
every decision whose margin is within ``BOUNDARY_TOL`` of zero with the plain forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..classifier import Classifier, padded_index
from ..models.zoo import SubtractImage
from .sparse_head import SparseHead
from .windows import Window, _ceil_div, _inside, _Pair, _Spatial, _spatial_params, paste_clipped, window_cells

__all__ = ["BOUNDARY_TOL", "IncrementalPrefix", "IncrementalCaches", "Window", "paste_clipped", "window_cells"]

BOUNDARY_TOL = 1e-3

_ELEMENTWISE = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout, nn.GELU, nn.SiLU, nn.BatchNorm2d,
)


def _leaves(seq: nn.Sequential) -> list[nn.Module]:
    """The modules of ``seq`` in order, nested ``nn.Sequential`` containers unrolled (the
    composition is the same function)."""
    out: list[nn.Module] = []
    for layer in seq:
        out.extend(_leaves(layer) if type(layer) is nn.Sequential else [layer])
    return out



@dataclass
class IncrementalCaches:
    """Per-input base maps of one shard.

    ``inputs[i]``: the input map of spatial layer ``i`` ``(N, H_i + margins, W_i + margins, C_i)``
    (zero outside the real map); ``rest``: the input of the first layer after the chain,
    ``(N, H·W + 1, C)`` (``rest_size = (H, W)``; the last position is a scratch slot that takes
    window positions outside the map); ``pixels``: the normalised input ``(N, C, H·W)`` (for
    element features).
    """

    inputs: list[torch.Tensor]
    rest: torch.Tensor
    pixels: torch.Tensor
    rest_size: _Pair
    head: SparseHead | None = None  # the rest on the windows' positions only, when it splits



def _through_head(head: SparseHead, a: torch.Tensor, wins: list[Window], size: _Pair) -> torch.Tensor | None:
    """Model outputs ``(B, K)`` from the final windows ``wins`` through the sparse head (where
    windows meet they hold the same, combined, values; such a position counts once), or ``None``
    when the dense layers are cheaper. A head with many outputs multiplies each map position's
    weights once for all rows that change it (:meth:`.SparseHead.change_positional`)."""
    lins: list[torch.Tensor] = []
    zs: list[torch.Tensor] = []
    owns: list[torch.Tensor] = []
    for j, w in enumerate(wins):
        b, ch, wh, ww = w.values.shape
        lin = window_cells(w.r0, w.c0, (wh, ww), size)
        own = torch.ones_like(lin, dtype=torch.bool)
        for k in range(j):
            own &= ~(lin.unsqueeze(2) == lins[k].unsqueeze(1)).any(2)
        lins.append(lin)
        zs.append(w.values.permute(0, 2, 3, 1).reshape(b, wh * ww, ch))
        owns.append(own)
    lin, z, own = torch.cat(lins, 1), torch.cat(zs, 1), torch.cat(owns, 1)
    if head.cheap:
        return head.outputs(a, lin, z, own)
    if lin.shape[1] > size[0] * size[1]:  # more entries per row than the dense map has positions
        return None
    return head.finish(a, head.change_positional(a, lin, z, own))


@dataclass
class IncrementalPrefix:
    """See the module docstring. Build with :meth:`build` (``None`` when not applicable)."""

    #: whether :meth:`max_chunk` bounds every call's memory (callers then need no cap of their own)
    bounded_chunks: ClassVar[bool] = False
    model: Classifier
    modules: list[nn.Module]  # the chain (spatial + elementwise), in order
    spatial: list[_Spatial]
    rest: nn.Module
    channels: int  # input channels
    chunk: int = 0  # rows per call inside :meth:`outputs` (0: all at once)
    shift: torch.Tensor | None = None  # (C, H·W) image a leading SubtractImage takes away
    head_weight: torch.Tensor | None = None  # the sparse head's weight, once built (see base())

    @property
    def depth(self) -> int:
        """Number of leading modules evaluated incrementally."""
        return len(self.modules)

    @staticmethod
    def build(
        model: Classifier, shape: tuple[int, int, int], max_share: float = 0.8, windows: int = 1,
    ) -> IncrementalPrefix | None:
        """The chain for ``model`` on inputs of ``shape`` ``(C, H, W)``; ``None`` when no spatial
        layer can be windowed. ``max_share``: stop before a layer whose ``windows`` output windows
        (one per changed pixel: ``t`` at level ``t``) would cover more than this share of its
        output map (measured: at t = 2 on the paper CNN the chain that stops before the last conv
        is 1.4× faster than the one through it, at t = 1 the deeper one is ≈ 8 % faster)."""
        if windows < 1:
            raise ValueError(f"windows: expected a positive int, got {windows!r}")
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
        shift: torch.Tensor | None = None
        layers = _leaves(seq)  # nested Sequentials (e.g. feature_extractor / classifier) unrolled
        for i, layer in enumerate(layers):
            if i == 0 and isinstance(layer, SubtractImage) and tuple(layer.average.shape) == (c, h, w):
                # a position-dependent shift (MATLAB's zerocenter): applied to each changed value
                # at its own pixel (see _normalise_values), so it keeps windows one pixel wide
                shift = layer.average.detach().reshape(c, h * w).to(model.device, model.dtype)
                mods.append(layer)
                continue
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
            if windows * win_out[0] * win_out[1] > max_share * out_size[0] * out_size[1]:
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
        rest = nn.Sequential(*layers[len(mods):])
        return IncrementalPrefix(model=model, modules=mods, spatial=spatial, rest=rest, channels=c, shift=shift)

    # -- base maps ------------------------------------------------------------------------------
    @torch.no_grad()
    def base(self, x0: torch.Tensor) -> IncrementalCaches:
        """Base maps of the inputs ``x0`` ``(N, C, H, W)`` (pixel space), stored channels-last
        (``(N, H, W, C)``) so that patches are gathered as whole rows of ``C`` values."""
        z = self.model._normalise(x0.to(self.model.device, self.model.dtype))
        pixels = z.reshape(z.shape[0], z.shape[1], -1)
        if self.shift is not None:
            pixels = pixels - self.shift
        inputs: list[torch.Tensor] = []
        si = 0
        for layer in self.modules:
            if si < len(self.spatial) and layer is self.spatial[si].module:
                sp = self.spatial[si]
                padded = F.pad(z, [sp.margin_lo[1], sp.margin_hi[1], sp.margin_lo[0], sp.margin_hi[0]])
                inputs.append(padded.permute(0, 2, 3, 1).contiguous())
                si += 1
            z = layer(z)
        n, c = z.shape[0], z.shape[1]
        rest = torch.zeros(n, z.shape[2] * z.shape[3] + 1, c, dtype=z.dtype, device=z.device)
        rest[:, :-1] = z.permute(0, 2, 3, 1).reshape(n, -1, c)
        size = (z.shape[2], z.shape[3])
        head = SparseHead.build(self.rest, rest, size, weight=self.head_weight)
        if head is not None:
            self.head_weight = head.weight  # the same for every shard
        return IncrementalCaches(inputs=inputs, rest=rest, pixels=pixels, rest_size=size, head=head)

    # -- perturbed rows -------------------------------------------------------------------------
    @torch.no_grad()
    def outputs(
        self, caches: IncrementalCaches, a: torch.Tensor, pixel: torch.Tensor,
        values: torch.Tensor, channel: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw model outputs ``(B, K)`` for perturbations of ``t`` features each.

        Args:
            caches: from :meth:`base` for the shard's inputs.
            a: ``(B,)`` row → input (index into the caches).
            pixel: ``(B,)`` or ``(B, t)`` spatial indices ``h·W + w`` of the changed pixels
                (distinct within a row for pixel features).
            values: ``(B, Cf)`` or ``(B, t, Cf)`` new pixel-space values (all channels, or the
                one given by ``channel``).
            channel: ``(B,)`` / ``(B, t)`` channels of element features, or ``None`` for pixels.
        """
        if pixel.dim() == 1:
            pixel = pixel.unsqueeze(1)
            values = values.unsqueeze(1)
            channel = None if channel is None else channel.unsqueeze(1)
        n_rows = a.shape[0]
        step = self.chunk if self.chunk > 0 else max(1, n_rows)
        cap = self.max_chunk(caches)
        if cap > 0:
            step = min(step, cap)
        parts = []
        for i in range(0, n_rows, step):
            j = min(i + step, n_rows)
            # pad every call to a canonical row count (see Classifier.__call__): few distinct
            # shapes keep kernel plans cached and memory from fragmenting
            idx = i + padded_index(j - i, a.device, self.model.bucket)
            out = self._outputs(caches, a[idx], pixel[idx], values[idx], None if channel is None else channel[idx])
            parts.append(out[: j - i])
        if not parts:
            return self._outputs(caches, a, pixel, values, channel)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _outputs(
        self, caches: IncrementalCaches, a: torch.Tensor, pixel: torch.Tensor,
        values: torch.Tensor, channel: torch.Tensor | None,
    ) -> torch.Tensor:
        wins = self.windows_through(caches, a, self._input_windows(caches, a, pixel, values, channel),
                                    len(self.modules))
        if caches.head is not None:
            result = _through_head(caches.head, a, wins, caches.rest_size)
            if result is not None:
                return result
        out = caches.rest.index_select(0, a)  # (B, H·W + 1, C)
        hr, wr = caches.rest_size
        for w in wins:
            paste_clipped(out, w, (hr, wr))
        result = self.rest(out[:, : hr * wr].view(a.shape[0], hr, wr, -1).permute(0, 3, 1, 2))
        if not isinstance(result, torch.Tensor) or result.dim() != 2:
            raise ValueError("model output: expected shape (N, classes) from the incremental path")
        return result

    def _input_windows(
        self, caches: IncrementalCaches, a: torch.Tensor, pixel: torch.Tensor,
        values: torch.Tensor, channel: torch.Tensor | None,
    ) -> list[Window]:
        """One-pixel windows ``(B, C, 1, 1)`` of normalised values, one per changed pixel
        (``pixel`` ``(B, t)``, ``values`` ``(B, t, Cf)``, ``channel`` as in :meth:`outputs`)."""
        b, t = pixel.shape
        w_img = self.image_width
        new = self._normalise_values(values, channel)  # (B, t, Cf)
        if self.shift is not None:
            new = new - (self.shift[:, pixel].permute(1, 2, 0) if channel is None
                         else self.shift[channel, pixel].unsqueeze(2))
        wins: list[Window] = []
        for j in range(t):
            if channel is None:
                v = new[:, j, :]
            else:  # every change at this pixel (element features may share one)
                v = caches.pixels[a, :, pixel[:, j]].clone()  # (B, C)
                for k in range(t):
                    hit = (pixel[:, k] == pixel[:, j]).nonzero().squeeze(1)
                    v[hit, channel[hit, k]] = new[hit, k, 0]
            wins.append(Window(v.reshape(b, -1, 1, 1), pixel[:, j] // w_img, pixel[:, j] % w_img))
        return wins

    def max_chunk(self, caches: IncrementalCaches) -> int:
        """The most rows per call inside :meth:`outputs` (0: no limit beyond :attr:`chunk`)."""
        return 0

    @property
    def image_width(self) -> int:
        """Width of the input images."""
        return self.spatial[0].map_in[1]

    @property
    def supports_pairs(self) -> bool:
        """Whether the level-2 pair tables (:mod:`.pairs`) can be built on this chain."""
        return True

    def windows_through(
        self, caches: IncrementalCaches, a: torch.Tensor, wins: list[Window], stop: int, start: int = 0,
    ) -> list[Window]:
        """Run the windows ``wins`` (at the input of ``self.modules[start]``; at the start:
        normalised) through ``self.modules[start:stop]``."""
        done = {id(m) for m in self.modules[:start]}
        si = sum(id(sp.module) in done for sp in self.spatial)
        for layer in self.modules[start:stop]:
            if isinstance(layer, SubtractImage):
                continue  # applied with the values (_outputs, pixel_windows)
            if si < len(self.spatial) and layer is self.spatial[si].module:
                wins = self._spatial_step(self.spatial[si], caches.inputs[si], wins, a, first=si == 0)
                si += 1
            else:
                wins = [Window(layer(w.values), w.r0, w.c0) for w in wins]
        return wins

    def pixel_windows(self, pixel: torch.Tensor, values: torch.Tensor) -> list[Window]:
        """One-pixel input windows for ``pixel`` ``(B,)`` with pixel-space ``values`` ``(B, C)``."""
        w_img = self.image_width
        v = self._normalise_values(values, None)
        if self.shift is not None:
            v = v - self.shift[:, pixel].t()
        return [Window(v.reshape(v.shape[0], -1, 1, 1), pixel // w_img, pixel % w_img)]

    @staticmethod
    def _spatial_step(
        sp: _Spatial, base: torch.Tensor, wins: list[Window], a: torch.Tensor, first: bool,
    ) -> list[Window]:
        """Windows at the output of ``sp`` from the windows at its input (base map cached
        channels-last with margins in ``base`` ``(N, Hm, Wm, C)``). Each output window is
        computed from its patch with *every* window pasted in, so changes whose receptive
        fields meet are combined exactly."""
        dev = a.device
        b = a.shape[0]
        (kh, kw), (sh, sw), (ph, pw) = sp.kernel, sp.stride, sp.padding
        hm, wm, ch = base.shape[1], base.shape[2], base.shape[3]
        hp, wp = sp.patch
        # positions outside the real input map read the layer's zero padding (a one-pixel window
        # at the input is always inside)
        masked = [w if first else
                  Window(w.values * _inside(w, sp.map_in), w.r0, w.c0)
                  for w in wins]
        if len(masked) == 1 and (sh, sw) == (1, 1):
            # one window, stride 1: it sits at offset (kh-1, kw-1) of its patch in every row
            wj = masked[0]
            o_r, o_c = sp.origin(wj.r0, wj.c0)
            start = ((a * hm + o_r - ph + sp.margin_lo[0]) * wm + o_c - pw + sp.margin_lo[1]).view(b, 1)
            offs = (torch.arange(hp, device=dev).view(hp, 1) * wm + torch.arange(wp, device=dev)).view(1, -1)
            patch = base.view(-1, ch).index_select(0, (start + offs).view(-1)).view(b, hp, wp, ch)
            wh, ww = wj.values.shape[2], wj.values.shape[3]
            patch[:, kh - 1 : kh - 1 + wh, kw - 1 : kw - 1 + ww, :] = wj.values.permute(0, 2, 3, 1)
            return [Window(sp.run(patch.permute(0, 3, 1, 2)), o_r, o_c)]
        out: list[Window] = []
        for j, wj in enumerate(masked):
            o_r, o_c = sp.origin(wj.r0, wj.c0)
            patch = IncrementalPrefix._patch(sp, base, masked, a, j)
            out.append(Window(sp.run(patch.permute(0, 3, 1, 2)), o_r, o_c))
        return out

    @staticmethod
    def _patch(sp: _Spatial, base: torch.Tensor, wins: list[Window], a: torch.Tensor, j: int) -> torch.Tensor:
        """``(B, hp, wp, C)`` channels-last input patch of ``sp`` for the output window of
        ``wins[j]``: the base map with every window pasted (windows already masked to the map)."""
        dev = a.device
        b = a.shape[0]
        hm, wm, ch = base.shape[1], base.shape[2], base.shape[3]
        hp, wp = sp.patch
        o_r, o_c = sp.origin(wins[j].r0, wins[j].c0)
        p_r, p_c = o_r * sp.stride[0] - sp.padding[0], o_c * sp.stride[1] - sp.padding[1]  # patch origin
        rows = (p_r + sp.margin_lo[0]).unsqueeze(1) + torch.arange(hp, device=dev)  # (B, hp)
        cols = (p_c + sp.margin_lo[1]).unsqueeze(1) + torch.arange(wp, device=dev)
        lin = ((a.view(b, 1, 1) * hm + rows.unsqueeze(2)) * wm + cols.unsqueeze(1)).view(b, hp * wp)
        lin = torch.cat([lin, lin[:, :1]], dim=1)  # + a scratch slot for clipped pastes
        flat = base.view(-1, ch).index_select(0, lin.view(-1)).view(b, hp * wp + 1, ch)
        for k, wk in enumerate(wins):
            if k != j:  # other windows: only the part inside this patch
                paste_clipped(flat, wk, (hp, wp), p_r, p_c)
        paste_clipped(flat, wins[j], (hp, wp), p_r, p_c)  # own window: always inside
        return flat[:, : hp * wp].view(b, hp, wp, ch)

    def window_patch(self, caches: IncrementalCaches, a: torch.Tensor, wins: list[Window], layer: int,
                     j: int = 0) -> torch.Tensor:
        """``(B, hp, wp, C)`` input patch of spatial layer ``layer`` for the output window of
        ``wins[j]`` (windows at that layer's input, from :meth:`windows_through`)."""
        sp = self.spatial[layer]
        masked = wins if layer == 0 else [Window(w.values * _inside(w, sp.map_in), w.r0, w.c0) for w in wins]
        return self._patch(sp, caches.inputs[layer], masked, a, j)

    def _normalise_values(self, values: torch.Tensor, channel: torch.Tensor | None) -> torch.Tensor:
        v = values.to(self.model.device, self.model.dtype)
        pre = self.model.preprocessing
        if pre is None:
            return v
        mean = torch.tensor(pre.mean, dtype=v.dtype, device=v.device)
        std = torch.tensor(pre.std, dtype=v.dtype, device=v.device)
        if channel is None:
            return (v - mean) / std
        return (v - mean[channel].unsqueeze(-1)) / std[channel].unsqueeze(-1)
