"""Plain IEEE float32 arithmetic: the one place that knows the backends' precision switches.

Grid bounds, verifications and certificates are claims about the float32 model; GPUs (TF32)
and user settings can silently compute float32 work at lower precision. :func:`ieee_float32`
turns that off for a block and restores the caller's settings afterwards.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

__all__ = ["ieee_float32"]


@functools.cache
def _precision_switches() -> tuple[object, ...]:
    """The backends' float32-precision settings (PyTorch ≥ 2.9's ``fp32_precision`` API); the
    backend objects are fixed for the process, so they are looked up once (every model call
    enters :func:`ieee_float32`)."""
    found = []
    for backend in (torch.backends.cudnn, torch.backends.cuda, torch.backends.mkldnn):
        for name in ("conv", "matmul"):
            obj = getattr(backend, name, None)
            if obj is not None and hasattr(obj, "fp32_precision"):
                found.append(obj)
    return tuple(found)


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """Plain IEEE float32 arithmetic inside the block (also usable as a decorator).

    PyTorch computes float32 cuDNN convolutions in TF32 (a 10-bit mantissa) by default on
    Ampere and newer GPUs, and a user may switch matmuls / oneDNN to TF32 or bfloat16. Grid
    bounds, verifications and certificates must be about the float32 model, so the engine,
    the attack's decisions and certification run under this. The previous settings are restored
    on exit (also on an exception); on a CPU with default settings nothing changes.
    """
    switches = _precision_switches()
    if switches:
        old = [s.fp32_precision for s in switches]  # type: ignore[attr-defined]
        try:
            for s in switches:
                s.fp32_precision = "ieee"  # type: ignore[attr-defined]
            yield
        finally:
            for s, v in zip(switches, old, strict=True):
                s.fp32_precision = v  # type: ignore[attr-defined]
        return
    # older PyTorch: the legacy TF32 flags
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    legacy = (cudnn.allow_tf32, matmul.allow_tf32)
    try:
        cudnn.allow_tf32 = False
        matmul.allow_tf32 = False
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = legacy
