"""Choosing the fastest forward-pass execution mode (eager / channels_last / compile).

Modes only change memory layout or kernel fusion, not the function computed; the tests check
that bounds are identical to the plain path. ``auto`` times eager against channels_last on a
real batch and keeps the faster one; ``torch.compile`` is only used when asked for (its first
call takes seconds to minutes).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from ..classifier import Classifier
from ..validate import Choice
from . import tuning_cache
from .incremental import IncrementalCaches, IncrementalPrefix

__all__ = ["Mode", "incremental_pays", "select_mode", "time_forward", "tune", "tune_batch_size"]


class Mode(Choice):
    AUTO = "auto"
    EAGER = "eager"
    CHANNELS_LAST = "channels_last"
    COMPILE = "compile"
    COMPILE_CHANNELS_LAST = "compile+channels_last"

    @classmethod
    def argument(cls) -> str:
        return "mode"


#: rows per model call when the caller gives none (still capped by ``max_memory``): CPUs run
#: fastest at cache-sized calls (measured per model by :func:`tune_batch_size`); a GPU needs
#: tens of thousands of rows per call to be saturated (paper-mnist on an H200: 963k images/s
#: at 64k rows)
CPU_MAX_ROWS = 4096
GPU_MAX_ROWS = 1 << 16
#: the tuning of a run costs at most this share of the run's model evaluations (``work_rows``):
#: a small run (one image of a large network) measures on fewer rows or not at all, so that
#: tuning never dominates the work it tunes
TUNING_SHARE = 0.05
#: fewer rows than this do not tell channels_last from eager: the mode stays eager
MIN_PROBE_ROWS = 16
#: a chain that sizes its own calls and takes at most ``DECISIVE`` of the full forward pass's
#: time on ``QUICK_ROWS`` rows is used without the full measurement
QUICK_ROWS = 16
DECISIVE = 0.5


def time_forward(model: Classifier, x: torch.Tensor, repeats: int = 2) -> float:
    """Best-of-``repeats`` seconds for one forward pass of ``x`` (after one warm-up call)."""
    model(x)
    return min(_seconds(lambda: model(x), x.device) for _ in range(repeats))


def _has_conv(module: nn.Module | None) -> bool:
    return module is not None and any(isinstance(m, nn.Conv2d) for m in module.modules())


def _sample(model: Classifier, shape: tuple[int, ...], rows: int) -> torch.Tensor:
    lo, hi = model.bounds
    gen = torch.Generator().manual_seed(0)
    return (lo + (hi - lo) * torch.rand(rows, *shape, generator=gen)).to(model.device, model.dtype)


def tune_batch_size(model: Classifier, shape: tuple[int, ...], cap: int, budget: int | None = None) -> int:
    """The batch size (64 … 512, ≤ ``cap``) with the best measured throughput (larger batches
    fall out of the CPU caches and run slower on the models we measured: the CIFAR-10
    ResNet-20's t = 1 pass is 15–20 % faster at 64 rows than at 128). With a ``budget`` (rows
    of forward passes the measurement may cost: two calls per candidate), only the candidates
    that fit are measured (none: the smallest is used unmeasured)."""
    candidates = [b for b in (64, 128, 256, 512) if b <= cap] or [cap]
    if budget is not None:
        fitting = [b for i, b in enumerate(candidates) if 2 * sum(candidates[: i + 1]) <= budget]
        if len(fitting) < 2:
            return candidates[0]
        candidates = fitting
    best, best_rate = candidates[0], 0.0
    for b in candidates:
        rate = b / time_forward(model, _sample(model, shape, b), repeats=1)
        if rate > best_rate * 1.03:  # prefer smaller batches unless clearly faster
            best, best_rate = b, rate
    return best


def tune(
    model: Classifier, shape: tuple[int, ...], cap: int, batch_size: int | None, mode: str | Mode = "auto",
    work_rows: int | None = None,
) -> tuple[str, int]:
    """Configure the execution ``mode`` and choose the batch size.

    ``cap`` is the memory-derived maximum rows per call; a user ``batch_size`` is kept (capped),
    otherwise ``auto`` measures a few batch sizes (GPU: the cap) and keeps the fastest.
    ``work_rows``: model evaluations of the run, when known: the measurements then cost at most
    :data:`TUNING_SHARE` of them (half for the mode, half for the batch size; a shortened
    decision is reused by this process's runs with at most its budget, never stored on disk).
    Returns ``(mode in use, batch size)``.
    """
    default_rows = CPU_MAX_ROWS if model.device.type == "cpu" else GPU_MAX_ROWS
    rows = min(batch_size, cap) if batch_size is not None else min(cap, default_rows)
    key = (tuple(shape), Mode.parse(mode).value, rows, batch_size is None)
    if key not in model.tuned and Mode.parse(mode) is Mode.AUTO:
        stored = tuning_cache.lookup(tuning_cache.context_key(model, "tune", *key))
        if isinstance(stored, list) and len(stored) == 2 and stored[0] in ("eager", "channels_last"):
            model.tuned[key] = (str(stored[0]), int(stored[1]))
    budget = None if work_rows is None else int(TUNING_SHARE * work_rows) // 2  # per measurement
    earlier = model.tuned.get(("short", *key))  # ((mode, its budget), rows): shortened, this process
    if key not in model.tuned and earlier is not None and budget is not None and earlier[0][1] >= budget:
        select_mode(model, shape, earlier[1], str(earlier[0][0]))  # measured on at least this run's budget
        return str(earlier[0][0]), earlier[1]
    if key in model.tuned:
        used, rows = model.tuned[key]
        select_mode(model, shape, rows, str(used))
        return str(used), rows
    probe = min(rows, 256 if model.device.type == "cpu" else 8192)
    short = budget is not None and budget < 6 * probe  # select_mode: 3 calls per mode
    mode_rows = probe if budget is None else min(probe, budget // 6)
    used = select_mode(model, shape, mode_rows if mode_rows >= MIN_PROBE_ROWS else 0, mode)
    if batch_size is None and model.device.type == "cpu" and Mode.parse(mode) is not Mode.EAGER:
        short = short or (budget is not None and budget < 2 * sum(b for b in (64, 128, 256, 512) if b <= rows))
        rows = tune_batch_size(model, shape, rows, budget)
    if short:  # fewer rows than a full tuning: kept for this process's smaller runs only, not on disk
        model.tuned[("short", *key)] = ((used, budget), rows)
        return used, rows
    model.tuned[key] = (used, rows)
    if Mode.parse(mode) is Mode.AUTO:
        tuning_cache.store(tuning_cache.context_key(model, "tune", *key), [used, rows])
    return used, rows


def select_mode(model: Classifier, shape: tuple[int, ...], batch_size: int, mode: str | Mode = Mode.AUTO) -> str:
    """Configure ``model`` for ``mode`` and return the mode in use.

    ``auto`` considers channels_last only for float32 convolutional modules and keeps it only
    when it is at least 5 % faster on a batch of ``batch_size`` inputs (``batch_size < 1``: not
    measured, eager).
    """
    m = Mode.parse(mode)
    if m is Mode.EAGER:
        model.set_mode()
    elif m is Mode.CHANNELS_LAST:
        model.set_mode(channels_last=True)
    elif m is Mode.COMPILE:
        model.set_mode(compile=True)
    elif m is Mode.COMPILE_CHANNELS_LAST:
        model.set_mode(channels_last=True, compile=True)
    else:
        model.set_mode()
        if model.dtype == torch.float32 and _has_conv(model.modules()) and len(shape) == 3 and batch_size >= 1:
            x = _sample(model, shape, batch_size)
            eager = time_forward(model, x)
            model.set_mode(channels_last=True)
            cl = time_forward(model, x)
            if not cl < 0.95 * eager:
                model.set_mode()
    return model.mode


def incremental_pays(model: Classifier, inc: IncrementalPrefix, x0: torch.Tensor, rows: int, t: int = 1) -> bool:
    """Whether the incremental path is at least 10 % faster than the full forward pass on
    ``rows`` perturbations of ``t`` pixels of ``x0`` ``(N, C, H, W)``; on success it also sets
    ``inc.chunk`` to the fastest of a few sub-batch sizes. Cached in ``model.tuned`` and on disk."""
    key = ("incremental", type(inc).__name__, tuple(x0.shape[1:]), model.mode, rows, inc.depth, t)
    disk = tuning_cache.context_key(model, *key)
    stored = tuning_cache.lookup(disk) if key not in model.tuned else None
    if isinstance(stored, list) and len(stored) == 2 and isinstance(stored[0], bool):
        model.tuned[key] = (stored[0], int(stored[1]))
    if key in model.tuned:
        pays, chunk = model.tuned[key]
        inc.chunk = chunk
        return bool(pays)
    gen = torch.Generator().manual_seed(0)
    n_in, c, h, w = x0.shape
    t = min(t, h * w)
    a = torch.randint(0, n_in, (rows,), generator=gen).to(x0.device)
    pix = torch.rand(rows, h * w, generator=gen).argsort(dim=1)[:, :t].to(x0.device)  # distinct
    lo, hi = model.bounds
    vals = (lo + (hi - lo) * torch.rand(rows, t, c, generator=gen)).to(x0.device, x0.dtype)
    caches = inc.base(x0)
    x = x0[a].clone()
    for j in range(t):
        x.view(rows, c, h * w)[torch.arange(rows, device=x0.device), :, pix[:, j]] = vals[:, j]
    model(x[:QUICK_ROWS])  # warm-up
    if inc.bounded_chunks and _decisive(model, inc, caches, x, a, pix, vals):
        pays, best_chunk = True, 0  # the chain sizes its own calls (``max_chunk``)
        inc.chunk = best_chunk
        model.tuned[key] = (pays, best_chunk)
        tuning_cache.store(disk, [pays, best_chunk])
        return pays
    chunks = [b for b in (64, 128, 256) if b < rows] + [0]
    model(x)  # warm-up
    full = float("inf")
    times = dict.fromkeys(chunks, float("inf"))
    for _ in range(3):  # interleaved, best of 3: robust against other load on the machine
        full = min(full, _seconds(lambda: model(x), x0.device))
        for chunk in chunks:
            inc.chunk = chunk
            times[chunk] = min(times[chunk], _seconds(lambda: inc.outputs(caches, a, pix, vals), x0.device))
    best_chunk = min(chunks, key=lambda k: times[k])
    best = times[best_chunk]
    inc.chunk = best_chunk
    pays = best < 0.9 * full
    model.tuned[key] = (pays, best_chunk)
    tuning_cache.store(disk, [pays, best_chunk])
    return pays


def _decisive(model: Classifier, inc: IncrementalPrefix, caches: IncrementalCaches, x: torch.Tensor,
              a: torch.Tensor, pix: torch.Tensor, vals: torch.Tensor) -> bool:
    """Whether the chain takes at most :data:`DECISIVE` of the full forward pass's time on the
    first :data:`QUICK_ROWS` rows (best of 2 each, interleaved): then the full measurement is
    not needed (on a 224×224 ResNet-18 it costs ≈ 6 s, the chain taking a quarter of the time)."""
    q = min(QUICK_ROWS, x.shape[0])
    inc.chunk = 0
    full = chain = float("inf")
    for _ in range(2):
        full = min(full, _seconds(lambda: model(x[:q]), x.device))
        chain = min(chain, _seconds(lambda: inc.outputs(caches, a[:q], pix[:q], vals[:q]), x.device))
    return chain <= DECISIVE * full


def _seconds(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0
