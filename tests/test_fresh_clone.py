"""The suite on a fresh clone: tests that need the shared data are skipped (with the reason)
when it is absent, and are errors under CI (``CI=true``), so that CI keeps testing everything.

Checked by running pytest in a subprocess on a two-test file that uses the ``shared_data``
fixture of ``tests/conftest.py``, with ``L0TRE_DATA`` pointing to an empty folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = '''
from tests.conftest import shared_data  # noqa: F401 - the fixture under test


def test_needs_data(shared_data):
    assert (shared_data / "MANIFEST.md").is_file()


def test_without_data():
    assert True
'''


def _pytest(tmp_path: Path, data: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    probe = tmp_path / "probe"
    probe.mkdir(exist_ok=True)
    (probe / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER")}
    env.update(L0TRE_DATA=str(data), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:randomly",
         "--rootdir", str(probe), str(probe / "test_probe.py")],
        capture_output=True, text=True, timeout=300, env=env, cwd=probe,
    )


def test_missing_shared_data_skips_with_the_reason(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _pytest(tmp_path, empty, ci=None)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 1 skipped" in proc.stdout
    assert f"shared data not found at $L0TRE_DATA={empty}" in proc.stdout and "MANIFEST.md" in proc.stdout
    assert _pytest(tmp_path, empty, ci="false").returncode == 0


@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_shared_data_is_an_error_under_ci(tmp_path: Path, ci: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _pytest(tmp_path, empty, ci=ci)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 passed, 1 error" in proc.stdout  # the fixture fails: an error, not a skip
    assert "shared data not found" in proc.stdout and "CI" in proc.stdout


def test_present_shared_data_is_used(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "MANIFEST.md").write_text("# a stand-in\n")
    proc = _pytest(tmp_path, data, ci="true")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout
