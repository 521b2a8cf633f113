"""Brute-force oracle: the true maximum safe radius on the grid, by full enumeration."""

from __future__ import annotations

import itertools

import torch

import l0tre


def grid_points(steps: int, bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    lo, hi = bounds
    return torch.tensor([lo + k * (hi - lo) / steps for k in range(steps + 1)], dtype=torch.float64)


def brute_force_dm(model: torch.nn.Module, x0: torch.Tensor, steps: int, features: str = "pixel",
                   bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[int, int]:
    """Return (d_m^grid, n) for one input ``x0`` ``(C, H, W)``.

    Enumerates every assignment of every feature to either its original value or a grid colour;
    d = (min L0 over label-changing assignments) − 1, or n when none changes the label.
    """
    c, h, w = x0.shape
    g = grid_points(steps, bounds).to(x0.dtype)
    if features == "pixel":
        n, cf = h * w, c
        orig = x0.reshape(c, -1).T  # (n, C)
    else:
        n, cf = c * h * w, 1
        orig = x0.reshape(-1, 1)
    palette = torch.tensor(list(itertools.product(g.tolist(), repeat=cf)), dtype=x0.dtype)  # (P1, cf)
    # per feature options: original + every palette colour that differs
    options = []
    for f in range(n):
        diff = (palette != orig[f]).any(1)
        options.append(torch.cat([orig[f : f + 1], palette[diff]], 0))
    with torch.no_grad():
        j = int(model(x0.unsqueeze(0)).argmax(1))
        best = None
        counts = [o.shape[0] for o in options]
        total = 1
        for k in counts:
            total *= k
        strides = []
        acc = 1
        for k in reversed(counts):
            strides.append(acc)
            acc *= k
        strides.reverse()
        for b0 in range(0, total, 65536):
            r = torch.arange(b0, min(total, b0 + 65536))
            ib = torch.stack([(r // strides[f]) % counts[f] for f in range(n)], 1)  # 0 = original
            vals = torch.stack([options[f][ib[:, f]] for f in range(n)], 1)  # (B, n, cf)
            if features == "pixel":
                xb = vals.transpose(1, 2).reshape(-1, c, h, w)
            else:
                xb = vals.reshape(-1, c, h, w)
            pred = model(xb).argmax(1)
            l0 = (ib != 0).sum(1)
            adv = pred != j
            if bool(adv.any()):
                m = int(l0[adv].min())
                best = m if best is None else min(best, m)
    return (n if best is None else best - 1), n


def same(a: l0tre.Result, b: l0tre.Result) -> None:
    """Every bound, example, count and map of two results equal (not approximately)."""
    assert torch.equal(a.lower, b.lower), (a.lower, b.lower)
    assert torch.equal(a.upper, b.upper), (a.upper, b.upper)
    assert torch.equal(a.found, b.found)
    assert torch.equal(a.adversarial, b.adversarial)
    assert torch.equal(a.adversarial_label, b.adversarial_label)
    assert a.evaluations == b.evaluations, (a.evaluations, b.evaluations)
    assert a.level_evaluations == b.level_evaluations
    assert a.t == b.t
    for name in ("sensitivity", "certified_lower"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert torch.equal(x, y), name
