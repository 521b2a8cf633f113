"""``l0tre evaluate --pixels``: a restricted run's outputs never claim a lower bound, the full
run's do; a bad rule is one error line and exit 2."""

from __future__ import annotations

import csv
import json

import pytest

from l0tre.cli import main

from .conftest import Assets, run_cli


@pytest.mark.parametrize(("pixels", "claimed", "n"), [("sample:5", False, 5), ("all", True, 36)])
def test_pixels_end_to_end(assets: Assets, tmp_path_factory: pytest.TempPathFactory, pixels: str, claimed: bool,
                           n: int) -> None:
    out = tmp_path_factory.mktemp("pix") / "run"
    proc = run_cli("evaluate", "--model", assets.model, "--data", assets.data, "--t-max", "2", "--pixels", pixels,
                   "--out", out)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["pixels"] == pixels and data["config"]["pixels_used"] == pixels
    assert data["config"]["lower_bound_claimed"] is claimed
    assert data["lower_bound_claimed"] is claimed and data["global"]["lower_bound_claimed"] is claimed
    assert data["pixels"] == pixels and data["n_features"] == n
    with (out / "per_input.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {r["lower_claimed"] for r in rows} == {str(claimed)}
    assert {r["lower_kind"] for r in rows} == ({"grid"} if claimed else {"selection"})
    page = (out / "index.html").read_text()
    assert ("lower bound not claimed" in page) is not claimed
    assert ("the lower bound is not claimed" in proc.stdout) is not claimed


def test_bad_pixels_rule_is_one_error_line(assets: Assets, tmp_path_factory: pytest.TempPathFactory,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path_factory.mktemp("pix") / "bad"
    code = main(["evaluate", "--model", str(assets.model), "--data", str(assets.data), "--pixels", "sample:0",
                 "--out", str(out), "--quiet"])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("l0tre: error: pixels:"), lines
