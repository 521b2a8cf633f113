"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# tests never read or write the user's tuning cache (tests of the cache switch it on in a tmp dir)
os.environ["L0TRE_TUNING_CACHE"] = "off"

# one torch thread per test process: 2 xdist workers on 2 cores without oversubscription, and a
# single-process run on a busy machine not slowed 10-30x by thread hand-offs on tiny tensors
torch.set_num_threads(1)


def in_ci() -> bool:
    """Whether the tests run under CI (``CI`` set to anything but empty, ``0``, ``false``, ``no``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def shared_data_dir() -> Path:
    """The shared data folder: ``$L0TRE_DATA``, else ``shared/data`` beside the repository.

    When the folder is missing, the test is skipped with the reason (a fresh clone: the rest
    of the suite runs on the embedded data and generated tiny models); under CI (``CI=true``)
    it fails instead, so that CI keeps testing everything.
    """
    env = os.environ.get("L0TRE_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (root / "MANIFEST.md").is_file():
        where = f"$L0TRE_DATA={env}" if env else str(root)
        reason = (f"shared data not found at {where} (needs MANIFEST.md); set L0TRE_DATA to the "
                  "shared/data folder")
        if in_ci():
            pytest.fail(f"{reason} (CI: tests that need the shared data must run)", pytrace=False)
        pytest.skip(reason)
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to the shared data folder (models, MNIST, CIFAR-10 sample, ImageNet samples)."""
    return shared_data_dir()
