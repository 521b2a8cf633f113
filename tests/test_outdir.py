"""Output folders (:mod:`l0tre.outdir`): what is written reads back the same, atomically."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import l0tre
import l0tre.atomic
from l0tre import outdir
from l0tre.outdir import (
    ADVERSARIAL_NPZ,
    CSV_COLUMNS,
    EXAMPLES_PNG,
    PER_INPUT_CSV,
    RESULT_PT,
    RESULTS_JSON,
    json_safe,
    l0_distance,
    read_adversarial,
    read_per_input,
    read_results,
    results_dict,
    write_attack_examples,
    write_attack_outputs,
    write_outputs,
)
from l0tre.result import Result
from tests.cli.conftest import _one_thread, one_torch_thread  # noqa: F401 (fixture)

CONFIG = {"model_name": "hand-made", "bounds": [0.0, 1.0], "nan": float("nan")}


def _result(*, labels: bool = True, certified: bool = False) -> tuple[Result, torch.Tensor]:
    """A hand-made snapshot of 3 inputs of shape 2x3x3 (pixel features, n = 9) and the
    originals: input 0 has an example changing 2 pixels (one of them in both channels),
    input 1 one changing 1 pixel, input 2 none."""
    x = torch.linspace(0.05, 0.95, 3 * 2 * 3 * 3).reshape(3, 2, 3, 3)
    adv = x.clone()
    adv[0, :, 0, 0] = 1.0
    adv[0, 1, 2, 1] = 0.0
    adv[1, 0, 1, 1] = 0.5
    res = Result(
        lower=torch.tensor([1, 0, 2]), upper=torch.tensor([1, 0, 9]), found=torch.tensor([True, True, False]),
        adversarial=adv, adversarial_label=torch.tensor([2, 0, -1]), predicted=torch.tensor([1, 1, 0]),
        labels=torch.tensor([1, 2, 0]) if labels else None, n_features=9, epsilon=0.5, features="pixel",
        t=2, level_complete=True, certified_lower=torch.tensor([1, 0, 1]) if certified else None,
        evaluations=1234, seconds=1.5, history=[{"t": 1.0, "seconds": 0.5}], level_seconds=[0.5, 1.0],
        stopped="t_max",
    )
    return res, x


def _temp_files(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


@pytest.mark.parametrize(("labels", "certified"), [(True, False), (False, True)])
def test_write_outputs_round_trip(tmp_path: Path, labels: bool, certified: bool) -> None:
    res, x = _result(labels=labels, certified=certified)
    written = write_outputs(tmp_path / "new" / "dir", res, [10, 20, 30], x, CONFIG)
    d = tmp_path / "new" / "dir"
    assert sorted(p.name for p in d.iterdir()) == sorted([RESULTS_JSON, PER_INPUT_CSV, ADVERSARIAL_NPZ, RESULT_PT])
    assert not _temp_files(d)
    # results.json: strict JSON, read back equal to what was returned
    text = (d / RESULTS_JSON).read_text()
    assert "NaN" not in text and text.endswith("\n")
    assert read_results(d) == written
    assert written["config"]["nan"] is None
    g = written["global"]
    assert (g["lower"], g["upper"], g["inputs"], g["converged"]) == (1.0, pytest.approx(10 / 3), 3, 2)
    assert g["accuracy"] == (pytest.approx(2 / 3) if labels else None)
    assert [r["index"] for r in written["inputs"]] == [10, 20, 30]
    assert [r["row"] for r in written["inputs"]] == [0, 1, 2]
    # per_input.csv: the same rows, typed
    rows = read_per_input(d)
    assert list(rows[0]) == list(CSV_COLUMNS)
    for row, full in zip(rows, written["inputs"], strict=True):
        assert row == {k: full.get(k) for k in CSV_COLUMNS}
    # adversarial.npz: the two inputs with an example
    adv = read_adversarial(d)
    assert adv is not None
    assert adv["index"].tolist() == [10, 20] and adv["row"].tolist() == [0, 1]
    assert adv["l0"].tolist() == [2, 1]  # pixels, not channels
    assert adv["x_adv"].dtype == np.float32 and np.array_equal(adv["x_adv"], res.adversarial[:2].numpy())
    assert np.array_equal(adv["x"], x[:2].numpy())
    assert adv["label"].tolist() == ([1, 2] if labels else [-1, -1])
    assert adv["adversarial_label"].tolist() == [2, 0] and adv["predicted"].tolist() == [1, 1]
    # result.pt: the full result
    back = Result.load(d / RESULT_PT)
    for name in ("lower", "upper", "found", "adversarial", "adversarial_label", "predicted"):
        assert torch.equal(getattr(back, name), getattr(res, name)), name
    assert back.history == res.history and back.stopped == "t_max"


def test_rewrite_replaces_every_file(tmp_path: Path) -> None:
    res, x = _result()
    write_outputs(tmp_path, res, [0, 1, 2], x, CONFIG)
    res.upper[2] = 4
    res.stopped = "converged"
    write_outputs(tmp_path, res, [0, 1, 2], x, CONFIG)
    assert read_results(tmp_path)["stopped"] == "converged"
    assert read_per_input(tmp_path)[2]["upper"] == 4
    assert Result.load(tmp_path / RESULT_PT).stopped == "converged"
    assert not _temp_files(tmp_path)


def test_failed_write_keeps_the_previous_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails half-way leaves the earlier complete files and no temp file."""
    res, x = _result()
    write_outputs(tmp_path, res, [0, 1, 2], x, CONFIG)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace = os.replace
    calls = 0

    def flaky_replace(src: Any, dst: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the second file of the write
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(l0tre.atomic.os, "replace", flaky_replace)
    res.stopped = "converged"
    with pytest.raises(OSError, match="disk full"):
        write_outputs(tmp_path, res, [0, 1, 2], x, CONFIG)
    assert not _temp_files(tmp_path)
    assert (tmp_path / RESULTS_JSON).read_bytes() == before[RESULTS_JSON]  # results.json is written last
    assert (tmp_path / PER_INPUT_CSV).read_bytes() == before[PER_INPUT_CSV]


def test_results_dict_needs_one_index_per_input() -> None:
    res, _ = _result()
    with pytest.raises(ValueError, match="indices"):
        results_dict(res, [0, 1], {})


def test_json_safe() -> None:
    value = {"a": float("nan"), 1: (np.int64(3), np.float32(np.inf), [math.inf, 2.5])}
    assert json_safe(value) == {"a": None, "1": [3, None, [None, 2.5]]}
    json.dumps(json_safe(value), allow_nan=False)


def test_l0_distance() -> None:
    x = torch.zeros(1, 3, 2, 2)
    adv = x.clone()
    adv[0, :, 0, 0] = 1.0
    adv[0, 2, 1, 1] = 1.0
    assert l0_distance(adv, x, "pixel").tolist() == [2]
    assert l0_distance(adv, x, "element").tolist() == [4]


def test_read_results_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such folder"):
        read_results(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="results.json"):
        read_results(tmp_path)
    (tmp_path / RESULTS_JSON).write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="not readable JSON"):
        read_results(tmp_path)
    (tmp_path / RESULTS_JSON).write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an l0tre results file"):
        read_results(tmp_path)


def test_read_adversarial_errors(tmp_path: Path) -> None:
    assert read_adversarial(tmp_path) is None
    (tmp_path / ADVERSARIAL_NPZ).write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="adversarial.npz is not readable"):
        read_adversarial(tmp_path)
    with (tmp_path / ADVERSARIAL_NPZ).open("wb") as fh:
        np.savez(fh, index=np.arange(2))
    with pytest.raises(ValueError, match="lacks 'x_adv'/'index'"):
        read_adversarial(tmp_path)


def test_read_per_input_rejects_a_bad_cell(tmp_path: Path) -> None:
    res, x = _result()
    write_outputs(tmp_path, res, [0, 1, 2], x, CONFIG)
    text = (tmp_path / PER_INPUT_CSV).read_text().replace("True", "yes", 1)
    (tmp_path / PER_INPUT_CSV).write_text(text)
    with pytest.raises(ValueError, match="True or False"):
        read_per_input(tmp_path)


# -- l0tre attack folders -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def attacked() -> tuple[l0tre.AttackResult, torch.Tensor]:
    """A real attack on a tiny CNN (3x5x5 inputs, 3 classes), one input misclassified."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 5 * 5, 3)).eval()
    x = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    y[0] = (y[0] + 1) % 3
    with one_torch_thread():
        return l0tre.attack(net, x, labels=y, seed=0, precision="float32"), x


def test_attack_outputs_round_trip(tmp_path: Path, attacked: tuple[l0tre.AttackResult, torch.Tensor]) -> None:
    res, x = attacked
    indices = torch.tensor([7, 8, 9, 11])
    payload = write_attack_outputs(tmp_path / "out", res, x, indices, {"model": "m", "data": "d", "command": "attack"})
    d = tmp_path / "out"
    assert read_results(d) == json.loads(json.dumps(payload))
    assert payload["config"]["model"] == "m" and payload["config"]["epsilon"] == 0.5
    assert [r["index"] for r in payload["inputs"]] == [7, 8, 9, 11]
    adv = read_adversarial(d)
    assert adv is not None
    assert adv["index"].tolist() == [7, 8, 9, 11] and adv["index"].dtype == np.int64
    assert adv["x_adv"].dtype == np.float32 and np.array_equal(adv["x_adv"], res.x_adv.numpy())
    assert adv["success"].tolist() == res.success.tolist()
    l0 = (adv["x_adv"] != x.numpy()).any(1).reshape(4, -1).sum(1)
    assert [int(v) if ok else 0 for v, ok in zip(l0, adv["success"], strict=True)] == res.l0.tolist()
    assert bool(res.success.any())
    with Image.open(d / EXAMPLES_PNG) as img:
        img.load()
        # one 6 x 2 inch row per successful input at 100 dpi
        assert img.format == "PNG" and img.size == (600, 200 * min(8, int(res.success.sum())))
    assert not _temp_files(d)


def test_attack_examples_need_a_success(tmp_path: Path, attacked: tuple[l0tre.AttackResult, torch.Tensor]) -> None:
    res, x = attacked
    none = dataclasses.replace(res, success=torch.zeros_like(res.success))
    assert write_attack_examples(tmp_path / EXAMPLES_PNG, x, none) is False
    assert not list(tmp_path.iterdir())
    assert write_attack_examples(tmp_path / EXAMPLES_PNG, x, res, limit=1) is True
    assert [p.name for p in tmp_path.iterdir()] == [EXAMPLES_PNG]


def test_outdir_does_not_import_the_applications_at_run_time() -> None:
    source = Path(outdir.__file__).read_text()
    assert "from .apps" not in source.split("if TYPE_CHECKING:")[0]
