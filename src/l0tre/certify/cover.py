"""Certify a whole L0 level by covering its ``t``-subsets with larger boxes.

A box that frees ``k ≥ t`` features and is proven safe proves every ``t``-subset of those
features (each ``t``-subset's box is contained in it). The features are partitioned into
spatially compact *regions* (rectangles of pixels, all channels; with ``features="element"``
a region may also be split along channels). A *block* is the union of ``t`` distinct regions;
the blocks over all ``t``-combinations of regions cover every ``t``-subset, because a
``t``-subset meets at most ``t`` regions. A block that fails is refined: each of its regions
is halved and the children are the ``t``-combinations of the halves, which again cover every
``t``-subset of the parent. A block of ``t`` single features is one ``t``-subset: it goes to
branch and bound.

This module builds the covering; :func:`l0tre.certify.level.certify_level` bounds it.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

__all__ = [
    "Block",
    "Region",
    "block_features",
    "covering_blocks",
    "initial_regions",
    "refine_block",
    "region_features",
    "single_subsets",
    "subsets_tensor",
]

Region = tuple[int, int, int, int, int, int]  # (c0, c1, h0, h1, w0, w1), half-open ranges
Block = tuple[Region, ...]


def region_features(r: Region, shape: tuple[int, int, int], features: str) -> list[int]:
    """Feature indices of a region (pixels ``h*W + w`` or elements ``c*H*W + h*W + w``)."""
    _, hh, ww = shape
    c0, c1, h0, h1, w0, w1 = r
    pix = [h * ww + w for h in range(h0, h1) for w in range(w0, w1)]
    if features == "pixel":
        return pix
    return [c * hh * ww + p for c in range(c0, c1) for p in pix]


def _split(r: Region, features: str) -> tuple[Region, Region] | None:
    c0, c1, h0, h1, w0, w1 = r
    if (h1 - h0) * (w1 - w0) > 1:
        if h1 - h0 >= w1 - w0:
            m = (h0 + h1) // 2
            return (c0, c1, h0, m, w0, w1), (c0, c1, m, h1, w0, w1)
        m = (w0 + w1) // 2
        return (c0, c1, h0, h1, w0, m), (c0, c1, h0, h1, m, w1)
    if features == "element" and c1 - c0 > 1:
        m = (c0 + c1) // 2
        return (c0, m, h0, h1, w0, w1), (m, c1, h0, h1, w0, w1)
    return None


def initial_regions(shape: tuple[int, int, int], features: str, block: int) -> list[Region]:
    """Tile the image with ``block × block`` pixel patches (all channels)."""
    c, h, w = shape
    if block < 1:
        raise ValueError(f"block: expected a positive patch side, got {block}")
    return [(0, c, i, min(i + block, h), j, min(j + block, w))
            for i in range(0, h, block) for j in range(0, w, block)]


def covering_blocks(regions: list[Region], t: int) -> list[Block]:
    """All unions of ``t`` distinct regions (one block of everything if fewer regions)."""
    if t < 1:
        raise ValueError(f"t: expected a positive level, got {t}")
    if len(regions) <= t:
        return [tuple(regions)]
    return list(itertools.combinations(regions, t))


def refine_block(block: Block, t: int, features: str) -> list[Block]:
    """Children covering every ``t``-subset of ``block``; ``[]`` when it is a single subset."""
    parts: list[Region] = []
    for r in block:
        s = _split(r, features)
        parts.extend(s if s is not None else (r,))
    if len(parts) == len(block):
        return []
    return covering_blocks(parts, t)


def block_features(block: Block, shape: tuple[int, int, int], features: str) -> list[int]:
    """The sorted feature indices of a block."""
    return sorted(f for r in block for f in region_features(r, shape, features))


def subsets_tensor(blocks: list[list[int]], device: torch.device) -> Tensor:
    """Feature lists as an ``(S, k)`` tensor, padded with ``-1``."""
    k = max(len(b) for b in blocks)
    out = torch.full((len(blocks), k), -1, dtype=torch.int64)
    for i, b in enumerate(blocks):
        out[i, : len(b)] = torch.tensor(b, dtype=torch.int64)
    return out.to(device)


def single_subsets(block: Block, t: int, features: str) -> list[Block]:
    """All single ``t``-subsets of a block, as blocks of ``t`` single-feature regions."""
    leaves: list[Region] = []
    stack = list(block)
    while stack:
        r = stack.pop()
        s = _split(r, features)
        if s is None:
            leaves.append(r)
        else:
            stack.extend(s)
    return covering_blocks(sorted(leaves), t)
