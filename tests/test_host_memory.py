"""keep_freed_memory: glibc keeps freed tensors' memory, so re-allocating does not fault pages in again."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from l0tre.host_memory import ENV, keep_freed_memory


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return False
    return sys.platform.startswith("linux")


needs_glibc = pytest.mark.skipif(not _glibc(), reason="glibc's mallopt only")

_CHILD = """
import resource, torch
from l0tre.host_memory import keep_freed_memory
print(keep_freed_memory())
def batch():  # ten 8 MB tensors alive together (80 MB), then all freed, as a bound pass does
    xs = [torch.ones(2 << 20) for _ in range(10)]
    del xs
batch()  # warm-up: glibc's adaptive thresholds settle here
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    batch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env_value: str) -> tuple[str, int]:
    env = {**os.environ, ENV: env_value, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
    took, faults = out.stdout.split()
    return took, int(faults)


@needs_glibc
def test_freed_tensors_are_reused_without_page_faults() -> None:
    took_off, off = _faults("0")
    took_on, on = _faults("1")
    assert (took_off, took_on) == ("False", "True")
    # 8 × 80 MB = 640 MB = 160k pages of 4 KiB when freed memory goes back to the system
    assert off > 160_000 // 2
    assert on < off // 20


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "0")
    assert keep_freed_memory() is False


@needs_glibc
def test_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert keep_freed_memory() is True
