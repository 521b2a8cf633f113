"""Host (CPU) allocator settings: keep freed memory in the process instead of returning it.

glibc serves every allocation above its mmap threshold (128 KiB at start, adapted up to 32 MiB)
with a fresh ``mmap`` and gives it back on ``free``; the next tensor of that size then faults
in every page again (the kernel zeroes each 4 KiB page). The bound computations of
certification and coverage proofs allocate and free tens of MB per layer and box batch: on
the paper's sDNN, t = 2 with certification spent ≈ 40 % of its CPU time in the kernel on
≈ 14 M page faults for 4 images. :func:`keep_freed_memory` raises the mmap threshold to its
largest value (32 MiB) and keeps up to 1 GiB of freed heap memory (``mallopt``), the same as
the environment variables ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` set before
start. The cost: the process's resident memory stays near its peak after big work.

Only on Linux with glibc; elsewhere nothing changes. ``L0TRE_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
ENV = "L0TRE_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process (idempotent).

    Returns:
        ``True`` if both settings took effect; ``False`` on other platforms or C libraries,
        or when ``L0TRE_KEEP_FREED_MEMORY=0``.
    """
    if os.environ.get(ENV, "1").strip() in ("0", "off", "false", "no"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no mallopt parameters like these)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
