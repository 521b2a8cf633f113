"""Geometry of batches of boxes: their free coordinates, and groups of boxes that can share
a spatial window (:mod:`.window`, :mod:`.perbox`)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["extent_groups", "free_coordinates", "spatial_groups"]


def free_coordinates(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Flat indices ``(B, n)`` of the coordinates with ``lo < hi`` (``n`` = the largest count
    in the batch, at least 1) and a ``(B, n)`` mask of the real entries."""
    mask = (hi > lo).flatten(1)
    n = max(1, int(mask.sum(1).max().item())) if mask.numel() else 1
    order = torch.sort(mask.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :n]
    return order, mask.gather(1, order)


def spatial_groups(lo: Tensor, hi: Tensor, limit: int) -> list[Tensor]:
    """Split the boxes ``(B, C, H, W)`` into groups of at most ``limit`` whose free pixels lie
    in the same square tile (so that a common window stays small)."""
    b = lo.shape[0]
    if lo.dim() != 4 or b <= 1:
        return [torch.arange(b, device=lo.device)]
    free = (hi > lo).any(1)  # (B, H, W)
    h, w = free.shape[1:]
    rows, cols = free.any(2), free.any(1)
    has = rows.any(1)
    ar_h = torch.arange(h, device=lo.device)
    ar_w = torch.arange(w, device=lo.device)
    big = torch.tensor(10 ** 6, device=lo.device)
    r0 = torch.where(rows, ar_h, big).min(1).values
    r1 = torch.where(rows, ar_h, -big).max(1).values
    c0 = torch.where(cols, ar_w, big).min(1).values
    c1 = torch.where(cols, ar_w, -big).max(1).values
    side = int(torch.where(has, torch.maximum(r1 - r0, c1 - c0) + 1, 1).max())
    tile = max(4, 2 * side)
    key = torch.where(has, ((r0 + r1) // 2 // tile) * (w // tile + 2) + (c0 + c1) // 2 // tile,
                      -1)
    order = torch.argsort(key, stable=True)
    keys = key[order]
    groups: list[Tensor] = []
    for k in torch.unique_consecutive(keys):
        members = order[keys == k]
        groups.extend(members[s:s + limit] for s in range(0, len(members), limit))
    return groups


def extent_groups(lo: Tensor, hi: Tensor) -> list[Tensor]:
    """Split the boxes ``(B, C, H, W)`` by the height and width of the hull of their free
    pixels (for per-box windows, whose common size is the largest in a group)."""
    b = lo.shape[0]
    if lo.dim() != 4 or b <= 1:
        return [torch.arange(b, device=lo.device)]
    free = (hi > lo).any(1)  # (B, H, W)
    ext = []
    for m in (free.any(2), free.any(1)):
        n = m.shape[1]
        k = m.to(torch.int8)
        ext.append(torch.where(m.any(1), n - k.flip(1).argmax(1) - k.argmax(1), 0))
    key = ext[0] * (free.shape[2] + 1) + ext[1]
    order = torch.argsort(key, stable=True)
    keys = key[order]
    return [order[keys == k] for k in torch.unique_consecutive(keys)]
