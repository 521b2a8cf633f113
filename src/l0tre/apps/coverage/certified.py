"""``certify=True``: neurons proven not coverable within L0 ≤ t of any seed.

For an open neuron ``u`` (not covered, not proven unreachable) and a seed ``s``, level ``t`` is
proven when *no* input that differs from ``s`` in at most ``t`` pixels — any real values in the
model's bounds, every channel of a changed pixel free — makes ``u`` fire. This is the L0 level
certification of :func:`l0tre.certify.certify_level`, unchanged, run on the objective graph of
:func:`l0tre.certify.objective.neuron_target`: label ``0`` is kept exactly when no selected
pre-activation element exceeds the threshold. An element or dense unit selects itself; a conv
channel selects all its ``H·W`` elements (its mean activation cannot exceed ``τ ≥ 0`` when no
element does: exact for ``τ = 0``, sufficient otherwise).

Neurons are proven in groups: one level certification per seed for all the neurons still in
play (the hardest seeds first: those where a neuron is closest to firing); a group that is not
proven is halved until single neurons, which get branch and bound. A neuron's *largest t* is the
largest level proven for every seed (levels are tried upwards; a neuron that fails at ``t``
stays at ``t − 1``).

Before the proofs, random changes of at most ``t`` pixels of every seed are run through the
model: a neuron one of them fires at ``t`` is not tried at ``t`` (it is coverable there, with
real values). Proofs are then spot-checked the same way, with fresh changes: a neuron one of
them fires has its proof revoked (reported ``0``,
unknown; this only happens if the bounds are unsound, e.g. float32 rounding beyond the margin
or a broken relaxation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ...certify.graph import Graph
from ...certify.level import certify_level
from ...certify.objective import neuron_target
from ...certify.settings import LEVEL_SETTINGS, CertifySettings
from ...certify.types import Status
from .neurons import NeuronKind, Neurons

__all__ = ["CertifyCoverage", "NotCoverable", "prove_not_coverable"]


@dataclass(frozen=True)
class CertifyCoverage:
    """``t_max``: highest level tried; ``group_time`` / ``single_time``: seconds per level
    certification of a group / of a single neuron (the latter with branch and bound);
    ``time_limit``: seconds for the whole phase (``None``: no limit); ``check_samples``: random
    changes per seed and level for the spot check and the prefilter (``prefilter``: neurons a
    random change fires are not tried, nor those a change of one pixel of one of their
    ``sweep_seeds`` closest seeds to 11 values / the corners fires); ``rng_seed``: of the
    changes; ``max_rows``: selected pre-activation elements per group; ``max_memory``: bytes
    per bound pass."""

    t_max: int = 1
    group_time: float = 20.0
    single_time: float = 10.0
    time_limit: float | None = None
    check_samples: int = 256
    rng_seed: int = 0
    prefilter: bool = True
    max_rows: int = 2048
    sweep_seeds: int = 2
    max_memory: int = 1 << 32

    def __post_init__(self) -> None:
        if isinstance(self.t_max, bool) or not isinstance(self.t_max, int) or self.t_max < 1:
            raise ValueError(f"t_max: expected an integer >= 1, got {self.t_max!r}")
        if self.group_time <= 0 or self.single_time <= 0 or (self.time_limit is not None and self.time_limit <= 0):
            raise ValueError("group_time, single_time, time_limit: expected positive seconds, got "
                             f"{self.group_time}, {self.single_time}, {self.time_limit}")
        if self.check_samples < 0:
            raise ValueError(f"check_samples: expected an integer >= 0, got {self.check_samples}")


@dataclass(frozen=True)
class NotCoverable:
    """Per neuron asked ``(U,)``: ``largest_t`` the largest level proven for every seed (``0``:
    none), ``revoked`` a proof the spot check contradicted (then ``largest_t`` is ``0``);
    ``calls`` level certifications run; ``complete`` ``False`` when the time limit cut the phase
    short (the undecided neurons keep the levels proven before); ``seconds``; ``fired`` the
    smallest ``t`` at which the prefilter fired the neuron with real (not grid) values (``0``:
    not fired), a witness that it is coverable within L0 ≤ ``t``."""

    largest_t: Tensor
    revoked: Tensor
    calls: int
    complete: bool
    seconds: float
    fired: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))


class _Prover:
    def __init__(self, graph: Graph, neurons: Neurons, threshold: float, bounds: tuple[float, float],
                 s: CertifyCoverage, deadline: float | None) -> None:
        self.graph, self.neurons, self.threshold, self.bounds, self.s = graph, neurons, threshold, bounds, s
        self.deadline, self.calls = deadline, 0

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def selections(self, cols: Tensor) -> list[tuple[int, Tensor]]:
        out = []
        which = self.neurons.layer_of(cols)
        for li in torch.unique(which).tolist():
            layer = self.neurons.layers[li]
            local = cols[which == li] - layer.offset
            if self.neurons.kind is NeuronKind.CHANNEL and len(layer.shape) == 3:
                k = layer.shape[1] * layer.shape[2]
                local = (local.view(-1, 1) * k + torch.arange(k).view(1, -1)).flatten()
            out.append((layer.pre, local))
        return out

    def groups(self, cols: Tensor) -> list[Tensor]:
        """Positions in ``cols``, cut into groups of at most ``max_rows`` selected elements (the
        objective's rows: a ResNet channel has up to ``H·W = 1024``), last group first."""
        sizes = [sum(int(el.numel()) for _, el in self.selections(cols[i:i + 1])) for i in range(cols.numel())]
        out: list[list[int]] = [[]]
        rows = 0
        for i, n in enumerate(sizes):
            if out[-1] and rows + n > self.s.max_rows:
                out.append([])
                rows = 0
            out[-1].append(i)
            rows += n
        return [torch.tensor(g, dtype=torch.int64) for g in reversed(out)]

    def proven(self, cols: Tensor, x0: Tensor, t: int) -> bool:
        """One level certification: no neuron of ``cols`` fires within ``t`` pixels of ``x0``."""
        budget = self.s.single_time if cols.numel() == 1 else self.s.group_time
        if self.deadline is not None:
            budget = min(budget, self.deadline - time.monotonic())
        if budget <= 0:
            return False
        target = neuron_target(self.graph, self.selections(cols), self.threshold, self.bounds)
        single = cols.numel() == 1  # groups: hybrid (cost independent of the rows); singles: CROWN where auto picks it
        settings = CertifySettings.build(LEVEL_SETTINGS, method="auto" if single else "hybrid", time_limit=budget,
                                         use_bab=single, max_memory=self.s.max_memory,
                                         attack_steps=10 if single else 0)  # a failed group is halved: no search
        self.calls += 1
        return certify_level(target, x0, 0, t, settings=settings).status is Status.PROVEN

    def failed(self, cols: Tensor, x0: Tensor, t: int) -> Tensor:
        """``(U,)`` bool: the neurons of ``cols`` not proven at level ``t`` for seed ``x0`` (groups
        that fail are halved)."""
        out = torch.zeros(cols.numel(), dtype=torch.bool)
        stack = self.groups(cols)
        while stack:
            part = stack.pop()
            if self.expired():
                out[part] = True
                continue
            if self.proven(cols[part], x0, t):
                continue
            if part.numel() == 1:
                out[part] = True
            else:
                half = part.numel() // 2
                stack.extend([part[half:], part[:half]])
        return out


def prove_not_coverable(graph: Graph, neurons: Neurons, cols: Tensor, seeds: Tensor, threshold: float,
                        bounds: tuple[float, float], settings: CertifyCoverage | None = None) -> NotCoverable:
    """The largest level ``t ≤ t_max`` at which each neuron of ``cols`` ``(U,)`` is proven not
    coverable from any of ``seeds`` ``(N, C, H, W)`` (module docstring). ``graph``: the model's
    graph in float64, node indices as in ``neurons.graph``."""
    s = settings or CertifyCoverage()
    start = time.monotonic()
    prover = _Prover(graph, neurons, threshold, bounds, s, None if s.time_limit is None else start + s.time_limit)
    cols = cols.cpu().to(torch.int64)
    largest = torch.zeros(cols.numel(), dtype=torch.int64)
    alive = torch.ones(cols.numel(), dtype=torch.bool)
    complete = True
    if cols.numel() == 0:
        return NotCoverable(largest, torch.zeros(0, dtype=torch.bool), 0, True, time.monotonic() - start, largest)
    with torch.no_grad():
        score = neurons.values(seeds, cols)[1].float().cpu()
        # a neuron a random change of t pixels fires is not tried at t or above
        fired = _first_fired(neurons, cols, torch.full_like(largest, s.t_max), seeds, threshold, bounds,
                             s.check_samples if s.prefilter else 0, s.rng_seed)
        if s.prefilter:
            sweep = _single_pixel_sweep(neurons, cols, seeds, score, threshold, bounds, s.sweep_seeds)
            fired = torch.where((fired == 0) | (sweep & (fired > 1)), sweep.long(), fired)
    for t in range(1, s.t_max + 1):
        alive &= (fired == 0) | (fired > t)
        ok = alive.clone()
        order = score.masked_fill(~alive.view(1, -1), float("-inf")).amax(dim=1).argsort(descending=True)
        for i in order.tolist():
            idx = ok.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            ok[idx[prover.failed(cols[idx], seeds[i], t)]] = False
        if prover.expired():
            complete = False
            break
        largest[ok] = t
        alive = ok
        if not bool(alive.any()):
            break
    with torch.no_grad():  # the spot check (fresh random changes)
        revoked = _first_fired(neurons, cols, largest, seeds, threshold, bounds, s.check_samples,
                               s.rng_seed + 1) > 0
    largest[revoked] = 0
    return NotCoverable(largest, revoked, prover.calls, complete, time.monotonic() - start, fired)


def _single_pixel_sweep(neurons: Neurons, cols: Tensor, seeds: Tensor, score: Tensor, threshold: float,
                        bounds: tuple[float, float], per_neuron: int) -> Tensor:
    """``(U,)`` bool: fired by a change of one pixel of one of its ``per_neuron`` closest seeds
    to one of 11 evenly spaced values (one channel) or to a corner of the pixel box (several)."""
    out = torch.zeros(cols.numel(), dtype=torch.bool)
    if per_neuron == 0:
        return out
    n, c, h, w = seeds.shape
    lo, hi = bounds
    top = score.topk(min(per_neuron, n), dim=0).indices  # (k, U)
    values = torch.linspace(lo, hi, 11).view(-1, 1) if c == 1 else None
    for i in torch.unique(top).tolist():
        pick = (top == i).any(dim=0) & ~out
        if not bool(pick.any()):
            continue
        x = _corners(seeds[i], lo, hi) if values is None else _pixel_values(seeds[i], values.to(seeds))
        for r in range(0, len(x), 4096):
            hit = (neurons.values(x[r:r + 4096], cols[pick])[0] > threshold).any(dim=0).cpu()
            out[pick.nonzero().squeeze(1)[hit]] = True
    return out


def _pixel_values(x0: Tensor, values: Tensor) -> Tensor:
    """``x0`` ``(1, H, W)`` with one pixel set to one of ``values`` ``(V, 1)``: ``(H·W·V, 1, H, W)``."""
    _, h, w = x0.shape
    out = x0.reshape(1, 1, h * w).repeat(h * w, len(values), 1)
    pix = torch.arange(h * w, device=x0.device)
    out[pix, :, pix] = values.view(1, -1).expand(h * w, -1)
    return out.view(-1, 1, h, w)


def _first_fired(neurons: Neurons, cols: Tensor, levels: Tensor, seeds: Tensor, threshold: float,
                 bounds: tuple[float, float], samples: int, rng_seed: int) -> Tensor:
    """``(U,)`` the smallest ``t ≤ levels[u]`` at which a random change of ``t`` pixels of some
    seed fires neuron ``cols[u]`` (``0``: none found). Values per changed channel: a bound of
    the pixel range (3 in 4) or uniform inside; every single-pixel change to a corner of the
    pixel box is tried too when there are at most ``samples`` of them."""
    first = torch.zeros(cols.numel(), dtype=torch.int64)
    if samples == 0 or cols.numel() == 0:
        return first
    gen = torch.Generator().manual_seed(rng_seed)
    n, c, h, w = seeds.shape
    lo, hi = bounds
    for t in range(1, int(levels.max()) + 1):
        pick = ((levels >= t) & (first == 0)).nonzero().squeeze(1)
        if pick.numel() == 0:
            continue
        for i in range(n):
            pix = torch.rand(samples, h * w, generator=gen).argsort(dim=1)[:, :t]  # t distinct pixels
            mask = torch.zeros(samples, h * w, dtype=torch.bool).scatter_(1, pix, True).view(samples, 1, h, w)
            u = torch.rand(samples, c, h, w, generator=gen)
            corner = torch.rand(samples, c, h, w, generator=gen) < 0.75
            vals = torch.where(corner, torch.where(u < 0.5, lo, hi), lo + (hi - lo) * u).to(seeds)
            x = torch.where(mask.to(seeds.device), vals, seeds[i:i + 1])
            if t == 1 and h * w * 2 ** c <= samples:
                x = torch.cat([x, _corners(seeds[i], lo, hi)])
            value = neurons.values(x, cols[pick])[0]
            hit = pick[(value > threshold).any(dim=0).cpu()]
            first[hit[first[hit] == 0]] = t
    return first


def _corners(x0: Tensor, lo: float, hi: float) -> Tensor:
    """``x0`` ``(C, H, W)`` with one pixel set to one corner of ``[lo, hi]^C``, for every pixel
    and corner: ``(H·W·2^C, C, H, W)``."""
    c, h, w = x0.shape
    bits = (torch.arange(2 ** c).view(-1, 1) >> torch.arange(c).view(1, -1)) & 1  # (2^C, C)
    corner = (lo + (hi - lo) * bits.to(x0.dtype)).to(x0.device)
    out = x0.unsqueeze(0).repeat(h * w * 2 ** c, 1, 1, 1).view(h * w, 2 ** c, c, h * w)
    pix = torch.arange(h * w, device=x0.device)
    out[pix, :, :, pix] = corner.unsqueeze(0).expand(h * w, -1, -1)
    return out.view(-1, c, h, w)
