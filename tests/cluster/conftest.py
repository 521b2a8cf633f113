"""Fixtures of the Ray executor tests: one local Ray instance in a short temporary folder.

Ray keeps its sockets, logs and session files under ``_temp_dir`` (default ``/tmp/ray``); a
Unix socket path may hold at most 107 bytes, and Ray adds about 60 (``session_<date>_<pid>/
sockets/plasma_store``), so the folder is a short one directly in the system temp folder, not
pytest's deep ``tmp_path``. Without Ray installed the tests are skipped (an error under CI).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ..conftest import in_ci

RAY_CPUS = 2
#: environment of the local instance: no auth token written to ~/.ray, no usage report
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def import_ray() -> ModuleType:
    """``ray``, or a skip (an error under CI, which installs the ``dev`` extra with Ray)."""
    try:
        import ray
    except ImportError:
        if in_ci():
            pytest.fail("ray is not installed (CI installs the dev extra, which includes ray)", pytrace=False)
        pytest.skip("ray is not installed (pip install 'l0tre[ray]')")
    return ray


@pytest.fixture(scope="package")
def ray_local() -> Iterator[Path]:
    """A local Ray instance (``num_cpus=2``) for the Ray tests (started once: about 5 s); yields
    its temporary folder."""
    ray = import_ray()
    if ray.is_initialized():
        ray.shutdown()
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    folder = Path(tempfile.mkdtemp(prefix="l0r", dir="/tmp" if Path("/tmp").is_dir() else None))
    assert len(str(folder)) < 40, folder
    try:
        ray.init(num_cpus=RAY_CPUS, _temp_dir=str(folder), include_dashboard=False, logging_level="ERROR")
        yield folder
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="package")
def ex(ray_local: Path) -> Iterator[Any]:
    """A ``RayExecutor`` with two actor workers, shared by the tests (a test that needs the CPUs
    closes it; its next use starts the actors again)."""
    from l0tre.cluster import RayExecutor

    with RayExecutor(num_workers=2) as executor:
        yield executor
