"""The dense head of a network, evaluated only where a perturbation changed its input map.

When the layers after the incremental chain (or after a pair table's convolution) are
elementwise layers ``g`` (BatchNorm2d in eval, ReLU, …), then ``Flatten`` and a ``Linear``
layer, the linear output of a perturbed row is the base input's plus the change that the few
changed positions make::

    lin(x') = lin(x) + Σ_{changed p} W[:, p] · (g(z'_p) − g(z_p))

where ``z_p`` ``(C,)`` is the map at position ``p``. A row then costs ``O(changed positions)``
instead of the whole map (for the paper's sDNN: 2 × 16 of 289 positions at t = 2). Whatever
follows the linear layer (``tail``: e.g. ReLU and another linear layer) runs on the ``(B, K)``
result. The same function up to floating-point summation order; the engine re-checks every
decision near the boundary with the plain forward pass (as for the chain and the pair table).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["CHEAP_MAX_OUTPUTS", "GATHER_BYTES", "SparseHead", "entry_product", "positional_product", "split_head"]

GATHER_BYTES = 32 << 20  # per-row weights gathered at once (bounds the head's memory)
# Gathering each row's weights is a memory-bound product: it beats the dense layers only while
# the linear layer has few outputs (measured on 28×28 MNIST CNNs, one thread: 7–12× faster than
# dense with 10 outputs, 1.2–3× slower with 128 or 256).
CHEAP_MAX_OUTPUTS = 32
HEAD_BYTES = 256 << 20  # the largest linear layer whose weights are copied per map position

_POINTWISE = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout, nn.GELU, nn.SiLU, nn.BatchNorm2d,
)


def _flat_modules(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [m for child in module for m in _flat_modules(child)]
    return [module]


def split_head(after: nn.Module) -> tuple[nn.Sequential, nn.Linear, nn.Sequential] | None:
    """``(pointwise, linear, tail)`` when ``after`` is elementwise layers → ``Flatten`` (dims
    1 … −1) → ``Linear`` → anything; ``None`` otherwise (or in training mode)."""
    mods = _flat_modules(after)
    k = 0
    while k < len(mods) and isinstance(mods[k], _POINTWISE):
        k += 1
    if k + 1 >= len(mods) or any(m.training for m in mods):
        return None
    flat, linear = mods[k], mods[k + 1]
    if not isinstance(flat, nn.Flatten) or (flat.start_dim, flat.end_dim) != (1, -1):
        return None
    if not isinstance(linear, nn.Linear):
        return None
    return nn.Sequential(*mods[:k]), linear, nn.Sequential(*mods[k + 2 :])


@dataclass
class SparseHead:
    """The head for the base maps of one shard.

    Attributes:
        pointwise: the elementwise layers ``g`` (may be empty).
        tail: the layers after the linear one, on ``(B, K)``.
        base_act: ``(N, H·W + 1, C)`` ``g`` of the base maps, channels-last (scratch slot last).
        base_lin: ``(N, K)`` the linear layer's output for the base maps.
        weight: ``(H·W + 1, C, K)`` the linear weight per map position (the scratch slot: 0).
    """

    pointwise: nn.Sequential
    tail: nn.Sequential
    base_act: torch.Tensor
    base_lin: torch.Tensor
    weight: torch.Tensor

    @property
    def cheap(self) -> bool:
        """Whether :meth:`change` on many positions beats the dense layers (few outputs ``K``)."""
        return self.weight.shape[2] <= CHEAP_MAX_OUTPUTS

    @staticmethod
    @torch.no_grad()
    def build(after: nn.Module, base: torch.Tensor, size: tuple[int, int], *,
              weight: torch.Tensor | None = None) -> SparseHead | None:
        """For ``after`` (see :func:`split_head`) and the channels-last base maps ``base``
        ``(N, H·W + 1, C)`` of spatial ``size`` ``(H, W)``; ``None`` when ``after`` does not split,
        the linear layer does not read a ``C·H·W`` map or is larger than ``HEAD_BYTES``.
        ``weight``: a :attr:`weight` built before for the same layers and sizes."""
        parts = split_head(after)
        if parts is None:
            return None
        pointwise, linear, tail = parts
        n, slots, ch = base.shape
        hw = size[0] * size[1]
        if slots != hw + 1 or linear.in_features != ch * hw:
            return None
        if weight is None and linear.weight.numel() * linear.weight.element_size() > HEAD_BYTES:
            return None  # its per-position copy would cost too much memory: the dense layers
        act = _apply(pointwise, base).clone()  # a copy: its scratch slot is set below
        act[:, -1] = 0
        flat = act[:, :hw].permute(0, 2, 1).reshape(n, ch * hw)
        base_lin = torch.nn.functional.linear(flat, linear.weight, linear.bias)
        if weight is None:
            w = linear.weight.detach().view(-1, ch, hw).permute(2, 1, 0)  # (H·W, C, K)
            weight = torch.cat([w, torch.zeros_like(w[:1])]).contiguous()
        return SparseHead(pointwise=pointwise, tail=tail, base_act=act, base_lin=base_lin, weight=weight)

    @torch.no_grad()
    def outputs(self, a: torch.Tensor, lin: torch.Tensor, z: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """``(B, K')`` model outputs of rows of input ``a`` ``(B,)`` whose maps (before ``g``) are
        ``z`` ``(B, M, C)`` at positions ``lin`` ``(B, M)`` (scratch slot allowed) and the base
        elsewhere; ``own`` ``(B, M)`` bool marks the positions to count (each changed position
        exactly once)."""
        return self.finish(a, self.change(a, lin, z, own))

    @torch.no_grad()
    def change(self, a: torch.Tensor, lin: torch.Tensor, z: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """``(B, K)``: the change of the linear layer's output that those positions make."""
        b, m, ch = z.shape
        act = _apply(self.pointwise, z)
        rows = a.view(b, 1).expand(b, m)
        diff = (act - self.base_act[rows, lin]) * own.unsqueeze(2).to(act.dtype)  # (B, M, C)
        k = self.weight.shape[2]
        # the gathered weights are (rows, M·C, K): at most GATHER_BYTES at a time
        step = max(1, GATHER_BYTES // (m * ch * k * self.weight.element_size()))
        out = diff.new_empty(b, k)
        for i in range(0, b, step):
            j = min(b, i + step)
            w = self.weight.index_select(0, lin[i:j].reshape(-1)).view(j - i, m * ch, k)
            out[i:j] = torch.bmm(diff[i:j].reshape(j - i, 1, m * ch), w).squeeze(1)
        return out

    @torch.no_grad()
    def change_positional(self, a: torch.Tensor, lin: torch.Tensor, z: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """:meth:`change` position by position (:func:`positional_product`): for linear layers
        with many outputs ``K``, whose per-row weight gathers cost more than the dense layers."""
        b, m, _ = z.shape
        rows = a.view(b, 1).expand(b, m)
        diff = self.activation(z) - self.base_act[rows, lin]
        return positional_product(self.weight, lin, diff, own & (lin < self.weight.shape[0] - 1))

    @torch.no_grad()
    def change_shared(self, a: torch.Tensor, lin: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """:meth:`change` for rows that all change the same positions ``lin`` ``(M,)`` (distinct in
        the map, scratch slot allowed): ``z`` ``(B, M, C)``; one matrix product."""
        b, m, ch = z.shape
        diff = _apply(self.pointwise, z) - self.base_act[:, lin].index_select(0, a)  # (B, M, C)
        return diff.reshape(b, m * ch) @ self.weight[lin].reshape(m * ch, -1)

    def activation(self, z: torch.Tensor) -> torch.Tensor:
        """``g`` (the elementwise layers before ``Flatten``) on channels-last values ``(B, M, C)``."""
        return _apply(self.pointwise, z)

    @torch.no_grad()
    def finish(self, a: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
        """``(B, K')`` model outputs from the linear layer's changes ``change`` ``(B, K)``."""
        result = self.tail(self.base_lin.index_select(0, a) + change)
        if not isinstance(result, torch.Tensor) or result.dim() != 2:
            raise ValueError("model output: expected shape (N, classes) from the sparse head")
        return result


def positional_product(weight: torch.Tensor, lin: torch.Tensor, diff: torch.Tensor,
                       keep: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, K)`` where row ``i`` is ``Σ_j diff[i, j] @ weight[lin[i, j]]`` over the entries ``j``
    with ``keep[i, j]`` (all when ``None``), for ``weight`` ``(S, C, K)``, ``lin`` ``(B, M)`` and
    ``diff`` ``(B, M, C)`` (see :func:`entry_product`)."""
    b, m, ch = diff.shape
    pos = lin.reshape(-1)
    rows = torch.arange(b, device=lin.device).repeat_interleave(m)
    entries = diff.reshape(b * m, ch)
    if keep is not None:
        idx = keep.reshape(-1).nonzero().squeeze(1)
        pos, rows, entries = pos[idx], rows[idx], entries[idx]
    return entry_product(weight, rows, pos, entries, b)


def entry_product(weight: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, entries: torch.Tensor,
                  b: int) -> torch.Tensor:
    """``(b, K)``: the sum over entries ``e`` of ``entries[e] @ weight[pos[e]]`` into row
    ``rows[e]``, for ``weight`` ``(S, C, K)`` and ``entries`` ``(E, C)``. The entries of all rows at
    one map position multiply that position's ``(C, K)`` weights (a contiguous slice, never
    copied) in one product, so rows that share positions (one pixel's colours, neighbouring
    pixels) share every weight read."""
    order = torch.argsort(pos)
    uniq, counts = torch.unique_consecutive(pos[order], return_counts=True)
    rows, entries = rows[order], entries[order]
    out = entries.new_zeros(b, weight.shape[2])
    start = 0
    for p, c in zip(uniq.tolist(), counts.tolist(), strict=True):
        out.index_add_(0, rows[start : start + c], entries[start : start + c] @ weight[p])
        start += c
    return out


def _apply(pointwise: nn.Sequential, z: torch.Tensor) -> torch.Tensor:
    """``g`` on channels-last values ``(..., C)``: BatchNorm2d (eval) as a per-channel affine map,
    ReLU, Identity and Dropout (eval) directly; any other layer through ``(B, C, M, 1)`` maps."""
    if len(pointwise) == 0:
        return z
    if all(isinstance(m, (nn.ReLU, nn.Identity, nn.Dropout))
           or (isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None)
           for m in pointwise):
        for m in pointwise:
            if isinstance(m, nn.BatchNorm2d):
                z = _batch_norm_last(m, z)
            elif isinstance(m, nn.ReLU):
                z = torch.relu(z)
        return z
    flat = z.reshape(-1, z.shape[-2], z.shape[-1])
    out = pointwise(flat.permute(0, 2, 1).unsqueeze(3))
    return out.squeeze(3).permute(0, 2, 1).reshape(z.shape).contiguous()


def _batch_norm_last(bn: nn.BatchNorm2d, z: torch.Tensor) -> torch.Tensor:
    """An eval-mode BatchNorm2d with running statistics on channels-last values ``(..., C)``."""
    assert bn.running_mean is not None and bn.running_var is not None  # checked by the caller
    scale = torch.rsqrt(bn.running_var.to(z.dtype) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(z.dtype)
    shift = -bn.running_mean.to(z.dtype) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(z.dtype)
    return torch.addcmul(shift, z, scale)
