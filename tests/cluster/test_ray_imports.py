"""Ray stays optional: ``import l0tre``, the CLI and a whole ``l0tre evaluate`` run without
``--ray`` never import it; bad ``RayExecutor`` arguments and ``--ray`` options are one-line
errors naming the argument (no cluster is started for them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from l0tre.cli import main

from ..cli.conftest import cli_env, make_assets
from .conftest import import_ray

CHECK = """
import sys
import l0tre, l0tre.api, l0tre.engine, l0tre.cli
from l0tre.cli import main
code = main(sys.argv[1:])
print(code, sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
"""


def test_l0tre_and_the_cli_without_ray_do_not_import_ray(tmp_path: Path) -> None:
    assets = make_assets(tmp_path / "assets")
    args = ["evaluate", "--model", str(assets.model), "--data", str(assets.data), "--t-max", "1", "--quiet",
            "--no-report", "--out", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-c", CHECK, *args], capture_output=True, text=True, timeout=120,
                          env=cli_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "0 []", proc.stdout
    assert json.loads((tmp_path / "out" / "results.json").read_text())["config"]["ray"] is None


@pytest.mark.parametrize("args,message", [
    (["--ray-workers", "2"], "--ray-workers/--ray-gpus-per-worker: expected together with --ray ADDRESS"),
    (["--ray-gpus-per-worker", "1"], "expected together with --ray ADDRESS"),
    (["--ray", "auto", "--ray-workers", "0"], "--ray-workers: expected a positive integer, got '0'"),
    (["--ray", "auto", "--ray-gpus-per-worker", "-1"], "--ray-gpus-per-worker: expected a finite number >= 0"),
])
def test_ray_options_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                            message: str) -> None:
    assets = make_assets(tmp_path / "assets")
    code = main(["evaluate", "--model", str(assets.model), "--data", str(assets.data), "--quiet",
                 "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("l0tre: error: "), err
    assert message in err[0]
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("kwargs,error,message", [
    ({"address": ""}, ValueError, "address: expected 'auto', a cluster address or None, got ''"),
    ({"address": 5}, ValueError, "address: expected 'auto', a cluster address or None, got 5"),
    ({"num_workers": 0}, ValueError, "num_workers: expected an integer >= 1, got 0"),
    ({"num_workers": 1.5}, TypeError, "num_workers: expected an integer >= 1 or None, got float 1.5"),
    ({"gpus_per_worker": -1}, ValueError, "gpus_per_worker: expected a number >= 0, got -1"),
    ({"gpus_per_worker": True}, ValueError, "gpus_per_worker: expected a number >= 0, got True"),
    ({"cpus_per_worker": 0}, ValueError, "cpus_per_worker: expected a positive finite number, got 0"),
    ({"workers": "threads"}, ValueError, "workers: expected one of 'actors', 'tasks', got 'threads'"),
    ({"in_flight": 0}, ValueError, "in_flight: expected a positive integer, got 0"),
    ({"units_per_call": 0}, ValueError, "units_per_call: expected an integer >= 1, got 0"),
    ({"max_retries": -1}, ValueError, "max_retries: expected an integer >= 0, got -1"),
])
def test_executor_arguments_are_checked(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    import_ray()
    from l0tre.cluster import RayExecutor

    with pytest.raises(error) as info:
        RayExecutor(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message
