"""Branch and bound over input boxes: bisect a free coordinate until every piece is proven,
a counterexample is found, or a budget (depth, nodes, time) runs out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from l0tre.certify.boxes import bound_margins, box_target
from l0tre.certify.falsify import min_margin, search_counterexamples
from l0tre.certify.grouping import free_coordinates
from l0tre.certify.settings import CertifySettings, Split
from l0tre.certify.target import Target
from l0tre.certify.types import CertifyResult, Status
from l0tre.classifier import ieee_float32

__all__ = ["branch_and_bound", "certify_boxes_bab", "prove_by_halving", "split_all", "split_boxes"]


def split_boxes(target: Target, lo: Tensor, hi: Tensor, labels: Tensor, how: str = Split.WIDEST
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
    if Split.parse(how) is Split.SMEAR:
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
def prove_by_halving(target: Target, lo: Tensor, hi: Tensor, labels: Tensor, settings: CertifySettings, *,
                     rounds: int = 2, max_free: int = 4, deadline: float = float("inf")) -> tuple[Tensor, int]:
    """Prove boxes ``(B, C, H, W)`` (labels ``(B,)``) by halving all their free coordinates at
    once, ``rounds`` times, keeping only the children not proven yet (no counterexample search).

    For boxes with few free coordinates (``≤ max_free``, the same number in every box; else
    nothing is tried) this is a cheap first pass before :func:`certify_boxes_bab`: batched, and
    without a gradient per node.
    Returns a ``(B,)`` bool mask of the boxes proven (every piece's margin bound
    ``> settings.margin_tol``) and the number of pieces bounded.
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
        lb = bound_margins(target, c_lo, c_hi, labels[c_own], settings)
        pieces += int(c_lo.shape[0])
        bad = ~(lb > settings.margin_tol).all(1)
        open_ = torch.zeros_like(open_).index_fill_(0, c_own[bad], True) & open_
        keep = bad & open_[c_own]
        cur_lo, cur_hi, owner = c_lo[keep], c_hi[keep], c_own[keep]
    return ~open_, pieces  # a box is closed once every piece of it is proven


@ieee_float32()
def certify_boxes_bab(model: Any, lo: Tensor, hi: Tensor, label: int | Tensor, *, preprocessing: Any = None,
                      settings: CertifySettings | None = None, margin_tol: float | Tensor | None = None,
                      initial_margins: Tensor | None = None, **options: Any) -> CertifyResult:
    """Certify boxes ``[lo, hi]`` ``(B, C, H, W)`` with input branch and bound.

    Every unproven piece is searched for a counterexample (centre, corners, random points,
    projected gradient steps); a hit is re-checked with the original model
    (``argmax != label``) and makes its box ``FALSIFIED``. Pieces are bisected (``split``)
    until proven; a piece deeper than ``max_depth``, more than ``max_nodes`` bounded pieces in
    total, or ``time_limit`` seconds make the remaining boxes ``UNKNOWN``.

    Args:
        model, lo, hi, label, preprocessing: as :func:`l0tre.certify.certify_boxes`.
        settings: :class:`~l0tre.certify.settings.CertifySettings` (the bound settings, the
            budget and the branch-and-bound fields); ``options``: any of its fields, applied on
            top.
        margin_tol: a float sets ``settings.margin_tol``; a ``(K,)`` tensor is a threshold per
            class instead.
        initial_margins: sound margin lower bounds ``(B, K)`` already computed for the boxes
            with the same method, which skips the first bound pass.

    Returns:
        :class:`CertifyResult`: ``margin_lb`` ``(B, K)`` (the best sound bounds found),
        ``proven``, per-box ``status``, ``counterexamples`` and ``nodes``.
    """
    start = time.perf_counter()
    thresholds = margin_tol if isinstance(margin_tol, Tensor) else None
    if margin_tol is not None and thresholds is None:
        options["margin_tol"] = margin_tol
    settings = CertifySettings.build(settings, **options)
    target, labels = box_target(model, lo, hi, label, preprocessing, settings)
    return branch_and_bound(target, lo, hi, labels, settings, thresholds=thresholds,
                            initial_margins=initial_margins, start=start)


@ieee_float32()
def branch_and_bound(target: Target, lo: Tensor, hi: Tensor, labels: Tensor, settings: CertifySettings, *,
                     thresholds: Tensor | None = None, initial_margins: Tensor | None = None,
                     start: float | None = None) -> CertifyResult:
    """:func:`certify_boxes_bab` on a resolved target with labels ``(B,)``; ``thresholds``:
    ``(K,)`` per-class thresholds replacing ``settings.margin_tol``; ``start``: the
    ``time.perf_counter`` value the time limit counts from (default: now)."""
    start = time.perf_counter() if start is None else start
    dev, dt = target.graph.device, target.graph.dtype
    lo, hi = lo.to(device=dev, dtype=dt), hi.to(device=dev, dtype=dt)
    b = lo.shape[0]
    if initial_margins is not None:
        if initial_margins.shape != (b, target.num_classes):
            raise ValueError(f"initial_margins: expected shape {(b, target.num_classes)}, got "
                             f"{tuple(initial_margins.shape)}")
        root = initial_margins.to(device=dev, dtype=dt)
    else:
        root = bound_margins(target, lo, hi, labels, settings)
    tol: float | Tensor = settings.margin_tol if thresholds is None else thresholds
    search = _Search(target, labels, settings, tol, start, root)
    search.open(lo, hi)
    while search.step():
        pass
    return search.result()


@dataclass
class _Search:
    """The state of one branch and bound: the open pieces (a queue, with their owner box and
    depth), per-box statuses and counterexamples, and the best bounds of closed pieces."""

    target: Target
    labels: Tensor
    settings: CertifySettings
    tol: float | Tensor
    start: float
    root: Tensor
    nodes: int = 0
    steps: int = 0
    status: list[Status | None] = field(default_factory=list)
    cex: dict[int, Tensor] = field(default_factory=dict)
    q_lo: Tensor = field(default_factory=lambda: torch.empty(0))
    q_hi: Tensor = field(default_factory=lambda: torch.empty(0))
    q_own: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    q_depth: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    closed_min: Tensor = field(default_factory=lambda: torch.empty(0))

    def open(self, lo: Tensor, hi: Tensor) -> None:
        """Settle the boxes the root bounds prove, queue the others and search them."""
        root = self.root
        b = root.shape[0]
        self.nodes = b
        self.status = [None] * b
        proven = (root > self.tol).all(1)
        # min over the closed pieces of each box (its root bound where the root is proven)
        self.closed_min = torch.where(proven.view(-1, 1), root, torch.full_like(root, float("inf")))
        for i in torch.nonzero(proven).flatten().tolist():
            self.status[i] = Status.PROVEN
        open_idx = torch.nonzero(~proven).flatten()
        self.q_lo, self.q_hi, self.q_own = lo[open_idx], hi[open_idx], open_idx
        self.q_depth = torch.zeros(len(open_idx), dtype=torch.long, device=lo.device)
        _attack(self.target, self.q_lo, self.q_hi, self.labels, self.q_own, self.settings.attack_steps,
                self.settings.seed, self.status, self.cex)

    def _keep(self, keep: Tensor | slice) -> None:
        self.q_lo, self.q_hi, self.q_own, self.q_depth = (self.q_lo[keep], self.q_hi[keep], self.q_own[keep],
                                                          self.q_depth[keep])

    def step(self) -> bool:
        """Bisect the next pieces of the queue; ``False`` when the search is over."""
        s = self.settings
        self._keep(torch.tensor([self.status[int(o)] is None for o in self.q_own.tolist()], dtype=torch.bool,
                                device=self.q_own.device))
        if len(self.q_own) == 0 or self.nodes >= s.max_nodes or time.perf_counter() - self.start > s.time_limit:
            return False
        exhausted = self.q_depth >= s.max_depth
        for o in self.q_own[exhausted].unique().tolist():
            self.status[o] = Status.UNKNOWN
        if bool(exhausted.any()):
            return True
        take = max(1, min(s.batch_size // 2, (s.max_nodes - self.nodes + 1) // 2))
        p_lo, p_hi, p_own, p_depth = self.q_lo[:take], self.q_hi[:take], self.q_own[:take], self.q_depth[:take]
        self._keep(slice(take, None))
        c_lo, c_hi = split_boxes(self.target, p_lo, p_hi, self.labels[p_own], s.split)
        c_own, c_depth = p_own.repeat(2), (p_depth + 1).repeat(2)
        lb = bound_margins(self.target, c_lo, c_hi, self.labels[c_own], s)
        self.nodes += len(c_own)
        ok = (lb > self.tol).all(1)
        if bool(ok.any()):
            self.closed_min.scatter_reduce_(0, c_own[ok].view(-1, 1).expand(-1, lb.shape[1]), lb[ok], "amin")
        bad = ~ok
        self.steps += 1
        _attack(self.target, c_lo[bad], c_hi[bad], self.labels, c_own[bad], s.child_attack_steps,
                s.seed + self.steps, self.status, self.cex, light=True)
        self.q_lo, self.q_hi = torch.cat([self.q_lo, c_lo[bad]]), torch.cat([self.q_hi, c_hi[bad]])
        self.q_own, self.q_depth = torch.cat([self.q_own, c_own[bad]]), torch.cat([self.q_depth, c_depth[bad]])
        return True

    def result(self) -> CertifyResult:
        """Boxes with no open piece left are proven, the others unknown (unless falsified)."""
        still_open = set(self.q_own.tolist())
        final = [s if s is not None else (Status.UNKNOWN if i in still_open else Status.PROVEN)
                 for i, s in enumerate(self.status)]
        is_proven = torch.tensor([s is Status.PROVEN for s in final], dtype=torch.bool)
        root = self.root
        margin = torch.where(is_proven.to(root.device).view(-1, 1), torch.maximum(root, self.closed_min), root)
        return CertifyResult(margin.cpu(), is_proven, final, {k: v.cpu() for k, v in self.cex.items()},
                             self.settings.method_for(self.target.graph), time.perf_counter() - self.start,
                             self.nodes)


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
