"""Branch and bound over input boxes: bisect a free coordinate until every piece is proven,
a counterexample is found, or a budget (depth, nodes, time) runs out.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from l0tre.certify.bounds import BoundOptions, free_coordinates
from l0tre.certify.boxes import as_labels, bound_margins
from l0tre.certify.falsify import min_margin, search_counterexamples
from l0tre.certify.target import Target, resolve
from l0tre.certify.types import CertifyResult, Status
from l0tre.classifier import ieee_float32

__all__ = ["certify_boxes_bab", "prove_by_halving", "split_boxes", "split_all"]

_SPLITS = ("widest", "smear")


def split_boxes(target: Target, lo: Tensor, hi: Tensor, labels: Tensor, how: str = "widest"
                ) -> tuple[Tensor, Tensor]:
    """Bisect every box ``(B, C, H, W)`` along one free coordinate.

    ``"widest"``: the widest coordinate, ties broken by the margin's gradient at the centre;
    ``"smear"``: the largest ``width · |gradient|``. Returns children ``(2B, C, H, W)``
    (lower halves first, then upper halves)."""
    b = lo.shape[0]
    width = (hi - lo).flatten(1)
    centre = ((lo + hi) / 2).detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(min_margin(target, centre, labels).sum(), centre)
    g = grad.detach().abs().flatten(1)
    g = g / (g.max(1, keepdim=True).values + 1e-30)
    if how == "smear":
        score = width * (g + 1e-6)
    else:
        score = width * (1.0 + 1e-3 * g)
    score = torch.where(width > 0, score, torch.full_like(score, -1.0))
    dim = score.argmax(1, keepdim=True)
    lo_f, hi_f = lo.flatten(1), hi.flatten(1)
    mid = (lo_f.gather(1, dim) + hi_f.gather(1, dim)) / 2
    left_hi = hi_f.clone().scatter_(1, dim, mid)
    right_lo = lo_f.clone().scatter_(1, dim, mid)
    new_lo = torch.cat([lo_f, right_lo]).view(2 * b, *lo.shape[1:])
    new_hi = torch.cat([left_hi, hi_f]).view(2 * b, *lo.shape[1:])
    return new_lo, new_hi


def split_all(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Halve every free coordinate of every box ``(B, C, H, W)`` at once: ``2^k`` children per
    box with ``k`` free coordinates (all boxes must have the same ``k``). Returns the children
    ``(lo, hi)`` ``(B · 2^k, C, H, W)`` and their parent ``(B · 2^k,)`` (box-major)."""
    b = lo.shape[0]
    idx, valid = free_coordinates(lo, hi)
    k = idx.shape[1]
    if b and not bool(valid.all()):
        raise ValueError("split_all: every box needs the same number of free coordinates")
    bits = torch.cartesian_prod(*[torch.arange(2, device=lo.device)] * k).view(-1, k).to(lo.dtype)  # (2^k, k)
    lo_f, hi_f = lo.flatten(1), hi.flatten(1)
    a, z = lo_f.gather(1, idx), hi_f.gather(1, idx)  # (B, k)
    mid = (a + z) / 2
    c_lo = torch.where(bits.unsqueeze(0) > 0, mid.unsqueeze(1), a.unsqueeze(1))  # (B, 2^k, k)
    c_hi = torch.where(bits.unsqueeze(0) > 0, z.unsqueeze(1), mid.unsqueeze(1))
    m = bits.shape[0]
    out_lo = lo_f.unsqueeze(1).repeat(1, m, 1).scatter_(2, idx.unsqueeze(1).expand(b, m, k), c_lo)
    out_hi = hi_f.unsqueeze(1).repeat(1, m, 1).scatter_(2, idx.unsqueeze(1).expand(b, m, k), c_hi)
    parent = torch.arange(b, device=lo.device).repeat_interleave(m)
    return out_lo.view(b * m, *lo.shape[1:]), out_hi.view(b * m, *lo.shape[1:]), parent


@ieee_float32()
def prove_by_halving(target: Target, lo: Tensor, hi: Tensor, labels: Tensor, opts: BoundOptions, *,
                     rounds: int = 2, max_free: int = 4, batch_size: int = 256, margin_tol: float = 1e-6,
                     deadline: float = float("inf")) -> tuple[Tensor, int]:
    """Prove boxes ``(B, C, H, W)`` (labels ``(B,)``) by halving all their free coordinates at
    once, ``rounds`` times, keeping only the children not proven yet (no counterexample search).

    For boxes with few free coordinates (``≤ max_free``, the same number in every box; else
    nothing is tried) this is a cheap first pass before :func:`certify_boxes_bab`: batched, and
    without a gradient per node.
    Returns a ``(B,)`` bool mask of the boxes proven (every piece's margin bound ``> margin_tol``)
    and the number of pieces bounded.
    """
    b = lo.shape[0]
    proven = torch.zeros(b, dtype=torch.bool, device=lo.device)
    free = (hi > lo).flatten(1).sum(1) if b else None
    if free is None or int(free.max()) > max_free or int(free.min()) != int(free.max()):
        return proven, 0  # nothing to halve cheaply (too many, or unequal numbers of, free coordinates)
    pieces = 0
    open_ = torch.ones(b, dtype=torch.bool, device=lo.device)
    cur_lo, cur_hi, owner = lo, hi, torch.arange(b, device=lo.device)
    for _ in range(rounds):
        if cur_lo.shape[0] == 0 or time.perf_counter() > deadline:
            break
        c_lo, c_hi, parent = split_all(cur_lo, cur_hi)
        c_own = owner[parent]
        lb = bound_margins(target, c_lo, c_hi, labels[c_own], opts, batch_size)
        pieces += int(c_lo.shape[0])
        bad = ~(lb > margin_tol).all(1)
        open_ = torch.zeros_like(open_).index_fill_(0, c_own[bad], True) & open_
        keep = bad & open_[c_own]
        cur_lo, cur_hi, owner = c_lo[keep], c_hi[keep], c_own[keep]
    return ~open_, pieces  # a box is closed once every piece of it is proven


@ieee_float32()
def certify_boxes_bab(
    model: Any,
    lo: Tensor,
    hi: Tensor,
    label: int | Tensor,
    *,
    preprocessing: Any = None,
    method: str = "crown",
    intermediate: str = "auto",
    max_depth: int = 16,
    max_nodes: int = 20_000,
    time_limit: float = 60.0,
    batch_size: int = 256,
    max_memory: int = 1 << 30,
    dtype: torch.dtype = torch.float64,
    margin_tol: float | Tensor = 1e-6,
    attack_steps: int = 10,
    child_attack_steps: int = 0,
    split: str = "widest",
    seed: int = 0,
    initial_margins: Tensor | None = None,
) -> CertifyResult:
    """Certify boxes ``[lo, hi]`` ``(B, C, H, W)`` with input branch and bound.

    Every unproven piece is searched for a counterexample (centre, corners, random points,
    projected gradient steps); a hit is re-checked with the original model
    (``argmax != label``) and makes its box ``FALSIFIED``. Pieces are bisected (``split``)
    until proven; a piece deeper than ``max_depth``, more than ``max_nodes`` bounded pieces in
    total, or ``time_limit`` seconds make the remaining boxes ``UNKNOWN``.

    Args: as :func:`l0tre.certify.certify_boxes`, plus the budgets above, ``attack_steps``
        (gradient steps of the search in each box; ``margin_tol`` may also be a ``(K,)``
        threshold per class), ``child_attack_steps`` (in each unproven
        piece; centre, corners and random points are always tried), ``seed`` and
        ``initial_margins`` (sound margin lower bounds ``(B, K)`` already computed for the
        boxes with the same method, which skips the first bound pass).

    Returns:
        :class:`CertifyResult`: ``margin_lb`` ``(B, K)`` (the best sound bounds found),
        ``proven``, per-box ``status``, ``counterexamples`` and ``nodes``.
    """
    start = time.perf_counter()
    if split not in _SPLITS:
        raise ValueError(f"split: expected one of {_SPLITS}, got {split!r}")
    if max_depth < 0 or max_nodes <= 0 or time_limit <= 0:
        raise ValueError("max_depth, max_nodes and time_limit must be positive")
    if lo.dim() != 4 or lo.shape != hi.shape:
        raise ValueError(f"lo, hi: expected two (B, C, H, W) tensors of the same shape, got "
                         f"{tuple(lo.shape)} and {tuple(hi.shape)}")
    target = resolve(model, tuple(lo.shape[1:]), preprocessing=preprocessing, dtype=dtype)
    dev, dt = target.graph.device, target.graph.dtype
    lo, hi = lo.to(device=dev, dtype=dt), hi.to(device=dev, dtype=dt)
    opts = BoundOptions(method=method, intermediate=intermediate, max_memory=max_memory)
    b = lo.shape[0]
    labels = as_labels(label, b, dev)
    if initial_margins is not None:
        if initial_margins.shape != (b, target.num_classes):
            raise ValueError(f"initial_margins: expected shape {(b, target.num_classes)}, got "
                             f"{tuple(initial_margins.shape)}")
        root = initial_margins.to(device=dev, dtype=dt)
    else:
        root = bound_margins(target, lo, hi, labels, opts, batch_size)
    nodes = b
    status: list[Status | None] = [None] * b
    cex: dict[int, Tensor] = {}
    proven = (root > margin_tol).all(1)
    # min over the closed pieces of each box (its root bound where the root is proven)
    closed_min = torch.where(proven.view(-1, 1), root, torch.full_like(root, float("inf")))
    for i in torch.nonzero(proven).flatten().tolist():
        status[i] = Status.PROVEN
    open_idx = torch.nonzero(~proven).flatten()
    q_lo, q_hi, q_own = lo[open_idx], hi[open_idx], open_idx
    q_depth = torch.zeros(len(open_idx), dtype=torch.long, device=dev)
    _attack(target, q_lo, q_hi, labels, q_own, attack_steps, seed, status, cex)

    step = 0
    while True:
        keep = torch.tensor([status[int(o)] is None for o in q_own.tolist()], dtype=torch.bool,
                            device=dev)
        q_lo, q_hi, q_own, q_depth = q_lo[keep], q_hi[keep], q_own[keep], q_depth[keep]
        if len(q_own) == 0 or nodes >= max_nodes or time.perf_counter() - start > time_limit:
            break
        exhausted = q_depth >= max_depth
        for o in q_own[exhausted].unique().tolist():
            status[o] = Status.UNKNOWN
        if bool(exhausted.any()):
            continue
        take = max(1, min(batch_size // 2, (max_nodes - nodes + 1) // 2))
        p_lo, p_hi, p_own, p_depth = q_lo[:take], q_hi[:take], q_own[:take], q_depth[:take]
        q_lo, q_hi, q_own, q_depth = q_lo[take:], q_hi[take:], q_own[take:], q_depth[take:]
        c_lo, c_hi = split_boxes(target, p_lo, p_hi, labels[p_own], split)
        c_own, c_depth = p_own.repeat(2), (p_depth + 1).repeat(2)
        lb = bound_margins(target, c_lo, c_hi, labels[c_own], opts, batch_size)
        nodes += len(c_own)
        ok = (lb > margin_tol).all(1)
        if bool(ok.any()):
            closed_min.scatter_reduce_(0, c_own[ok].view(-1, 1).expand(-1, lb.shape[1]), lb[ok],
                                       "amin")
        bad = ~ok
        step += 1
        _attack(target, c_lo[bad], c_hi[bad], labels, c_own[bad], child_attack_steps,
                seed + step, status, cex, light=True)
        q_lo, q_hi = torch.cat([q_lo, c_lo[bad]]), torch.cat([q_hi, c_hi[bad]])
        q_own, q_depth = torch.cat([q_own, c_own[bad]]), torch.cat([q_depth, c_depth[bad]])

    still_open = set(q_own.tolist())
    for i in range(b):
        if status[i] is None:
            status[i] = Status.UNKNOWN if i in still_open else Status.PROVEN
    final = [s if s is not None else Status.UNKNOWN for s in status]
    is_proven = torch.tensor([s is Status.PROVEN for s in final], dtype=torch.bool)
    margin = torch.where(is_proven.to(dev).view(-1, 1), torch.maximum(root, closed_min), root)
    return CertifyResult(margin.cpu(), is_proven, final, {k: v.cpu() for k, v in cex.items()},
                         method, time.perf_counter() - start, nodes)


def _attack(target: Target, lo: Tensor, hi: Tensor, labels: Tensor, owners: Tensor, steps: int,
            seed: int, status: list[Status | None], cex: dict[int, Tensor],
            light: bool = False) -> None:
    """Search the pieces for counterexamples; mark their owners ``FALSIFIED``. ``light``:
    the centre only (pieces of a bisection share their corners with their parent, whose
    centre became one of them)."""
    if lo.shape[0] == 0:
        return
    if light:
        found, x = search_counterexamples(target, lo, hi, labels[owners], steps=steps,
                                          corner_dims=0, n_random=0, grid=0, seed=seed)
    else:
        found, x = search_counterexamples(target, lo, hi, labels[owners], steps=steps,
                                          seed=seed)
    for j in torch.nonzero(found).flatten().tolist():
        o = int(owners[j])
        if status[o] is None:
            status[o] = Status.FALSIFIED
            cex[o] = x[j].detach()
