"""Brute force for the saliency tests: every grid colour of every pixel, one image at a time."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

__all__ = ["BruteForce", "brute_force", "tiny_net"]


@dataclass
class BruteForce:
    """Per image and pixel ``(N, H, W)``: lowest margin, lowest softmax confidence over the grid
    colours that change the pixel (``inf`` / ``nan`` where none), any flip; base margin and
    confidence ``(N,)``."""

    margin: torch.Tensor
    confidence: torch.Tensor
    flips: torch.Tensor
    base_margin: torch.Tensor
    base_confidence: torch.Tensor


def _margin_conf(logits: torch.Tensor, j: int) -> tuple[float, float]:
    others = torch.cat([logits[:j], logits[j + 1 :]])
    return float(logits[j] - others.max()), float(torch.softmax(logits, 0)[j])


@torch.no_grad()
def brute_force(model: torch.nn.Module, x: torch.Tensor, levels: list[float]) -> BruteForce:
    """Evaluate each single-pixel change of each image ``x`` ``(N, C, H, W)`` on its own."""
    n, c, h, w = x.shape
    margin = torch.full((n, h, w), float("inf"))
    conf = torch.full((n, h, w), float("inf"))
    flips = torch.zeros(n, h, w, dtype=torch.bool)
    bm, bc = torch.zeros(n), torch.zeros(n)
    for i in range(n):
        out0 = model(x[i : i + 1])[0]
        j = int(out0.argmax())
        bm[i], bc[i] = _margin_conf(out0, j)
        for hh, ww in itertools.product(range(h), range(w)):
            for colour in itertools.product(levels, repeat=c):
                col = torch.tensor(colour, dtype=x.dtype)
                if torch.equal(col, x[i, :, hh, ww]):
                    continue
                xp = x[i : i + 1].clone()
                xp[0, :, hh, ww] = col
                out = model(xp)[0]
                m, p = _margin_conf(out, j)
                margin[i, hh, ww] = min(float(margin[i, hh, ww]), m)
                conf[i, hh, ww] = min(float(conf[i, hh, ww]), p)
                flips[i, hh, ww] |= int(out.argmax()) != j
    return BruteForce(margin, conf, flips, bm, bc)


def tiny_net(seed: int, channels: int = 1, classes: int = 3, size: int = 5) -> torch.nn.Module:
    """A small random conv net (eval mode) with logits of a few units' spread."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(channels, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * (size - 2) ** 2, classes),
    )
    return net.eval()
