"""Incremental evaluation of single-pixel perturbations through the leading conv layers.

A change at one pixel only affects a ``(G+1)×(G+1)`` window of the output of a stack of
stride-1 convolutions whose kernels grow the receptive field by ``G``. For a
``torch.nn.Sequential`` model that starts with such a *prefix* (Conv2d with stride 1 and no
dilation — only the first may pad — and elementwise layers: ReLU, BatchNorm2d in eval, …),
the prefix output of each original input is computed once (*base*), and for every
perturbed row only the window is recomputed from a ``(2G+1)×(2G+1)`` input patch and pasted
into a copy of the base; the rest of the network runs as usual.

The result is the same function up to floating-point summation order; the engine re-checks
every decision whose margin is within ``BOUNDARY_TOL`` of zero with the plain forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..classifier import Classifier

__all__ = ["IncrementalPrefix", "BOUNDARY_TOL"]

BOUNDARY_TOL = 1e-3

_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout, nn.GELU, nn.SiLU)


@dataclass
class IncrementalPrefix:
    """See the module docstring. Build with :meth:`build` (``None`` when not applicable)."""

    model: Classifier
    prefix: list[nn.Module]
    rest: nn.Module
    pad: int  # zero padding of the first conv (applied to the normalised input)
    grow: int  # G: total receptive-field growth of the prefix
    channels: int  # input channels

    @staticmethod
    def build(model: Classifier, shape: tuple[int, int, int]) -> IncrementalPrefix | None:
        seq = model.modules()
        if not isinstance(seq, nn.Sequential) or seq.training:
            return None
        prefix: list[nn.Module] = []
        pad = grow = 0
        n_conv = 0
        for layer in seq:
            if isinstance(layer, nn.Conv2d):
                p = layer.padding
                if (
                    layer.stride != (1, 1) or layer.dilation != (1, 1) or isinstance(p, str)
                    or layer.padding_mode != "zeros" or p[0] != p[1] or layer.kernel_size[0] != layer.kernel_size[1]
                    or (n_conv > 0 and p != (0, 0))
                ):
                    break
                if n_conv == 0:
                    pad = p[0]
                grow += layer.kernel_size[0] - 1
                n_conv += 1
            elif isinstance(layer, nn.BatchNorm2d) or isinstance(layer, _ELEMENTWISE):
                pass
            else:
                break
            prefix.append(layer)
        if n_conv == 0 or grow == 0:
            return None
        c, h, w = shape
        if h + 2 * pad - grow < 1 or w + 2 * pad - grow < 1:
            return None
        rest = nn.Sequential(*list(seq)[len(prefix):])
        return IncrementalPrefix(model=model, prefix=prefix, rest=rest, pad=pad, grow=grow, channels=c)

    # -- pieces ---------------------------------------------------------------------------------
    def _run_prefix(self, x: torch.Tensor, valid: bool) -> torch.Tensor:
        first = True
        for layer in self.prefix:
            if isinstance(layer, nn.Conv2d):
                x = F.conv2d(x, layer.weight, layer.bias, stride=1,
                             padding=(0 if valid or not first else layer.padding[0]), groups=layer.groups)
                first = False
            else:
                x = layer(x)
        return x

    def _normalised_padded(self, x0: torch.Tensor) -> torch.Tensor:
        """``x0`` ``(N, C, H, W)`` → normalised, zero-padded by ``pad`` (the conv's own padding)
        and then by ``G`` (so every window has a fixed size)."""
        z = self.model._normalise(x0.to(self.model.device, self.model.dtype))
        return F.pad(z, [self.pad + self.grow] * 4)

    @torch.no_grad()
    def base(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-input caches: the prefix output padded by ``G`` ``(N, C', H'+2G, W'+2G)`` and the
        padded normalised input ``(N, C, H+2P+2G, W+2P+2G)``."""
        z = self._normalised_padded(x0)
        g = self.grow
        inner = z[:, :, g : z.shape[2] - g, g : z.shape[3] - g]  # padded by P only
        out = self._run_prefix(inner, valid=True)
        return F.pad(out, [g] * 4), z

    @torch.no_grad()
    def outputs(
        self, caches: tuple[torch.Tensor, torch.Tensor], a: torch.Tensor, pixel: torch.Tensor,
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
        base, z = caches
        g, p = self.grow, self.pad
        w_img = z.shape[3] - 2 * (p + g)
        hh, ww = pixel // w_img, pixel % w_img
        size = 2 * g + 1
        # input patch rows [h + P, h + P + 2G] in z coordinates (z is padded by P + G)
        ar = torch.arange(size, device=z.device)
        rows = (hh + p).unsqueeze(1) + ar  # (B, size)
        cols = (ww + p).unsqueeze(1) + ar
        za = z[a]  # (B, C, Hz, Wz)
        patch = za[torch.arange(a.shape[0], device=z.device).view(-1, 1, 1, 1),
                   torch.arange(za.shape[1], device=z.device).view(1, -1, 1, 1),
                   rows.view(-1, 1, size, 1), cols.view(-1, 1, 1, size)]  # (B, C, size, size)
        new = self._normalise_values(values, channel)
        if channel is None:
            patch[:, :, g, g] = new
        else:
            patch[torch.arange(a.shape[0], device=z.device), channel, g, g] = new[:, 0]
        win = self._run_prefix(patch, valid=True)  # (B, C', G+1, G+1)
        # output window rows [h + P - G, h + P] → in base (padded by G) rows [h + P, h + P + G]
        out = base[a].clone()
        hb, wb = out.shape[2], out.shape[3]
        wrow = (hh + p).unsqueeze(1) + torch.arange(g + 1, device=z.device)
        wcol = (ww + p).unsqueeze(1) + torch.arange(g + 1, device=z.device)
        lin = (wrow.unsqueeze(2) * wb + wcol.unsqueeze(1)).view(a.shape[0], 1, -1)
        flat = out.view(a.shape[0], out.shape[1], hb * wb)
        flat.scatter_(2, lin.expand(-1, out.shape[1], -1), win.reshape(a.shape[0], out.shape[1], -1))
        inner = out[:, :, g : hb - g, g : wb - g]
        if self.model.channels_last:
            inner = inner.contiguous(memory_format=torch.channels_last)
        else:
            inner = inner.contiguous()
        result = self.rest(inner)
        if not isinstance(result, torch.Tensor) or result.dim() != 2:
            raise ValueError("model output: expected shape (N, classes) from the incremental path")
        return result

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
