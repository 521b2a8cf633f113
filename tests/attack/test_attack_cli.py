"""The ``attack`` subcommand hook (``add_parser`` / ``run``) on a tiny TorchScript model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from l0tre.cli.attack import add_parser, run
from l0tre.cli.parsing import parse_indices


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l0tre")
    add_parser(parser.add_subparsers(dest="command"))
    return parser


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)).eval()
    model_path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.trace(net, torch.rand(1, 3, 5, 5)), str(model_path))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 5, 5, generator=g)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[0] = (y[0] + 1) % 3  # one misclassified input
    data_path = tmp_path / "data.npz"
    np.savez(data_path, x=x.numpy(), y=y.numpy())
    return model_path, data_path


def test_attack_subcommand_writes_outputs(files: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    model_path, data_path = files
    out = tmp_path / "out"
    args = _parser().parse_args(["attack", "--model", str(model_path), "--data", str(data_path), "--out", str(out),
                                 "--indices", "0-4", "--quiet", "--json", "--seed", "3"])
    assert args.func is run
    assert run(args) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "results.json").read_text())
    assert printed == saved
    assert saved["config"]["seed"] == 3 and saved["config"]["model"] == str(model_path)
    assert set(saved["global"]) >= {"success_rate", "mean_l0", "median_l0", "std_l0", "seconds_per_image"}
    rows = saved["inputs"]
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0]["misclassified"] and not rows[0]["success"] and rows[0]["l0"] == 0
    for r in rows:
        assert set(r) >= {"index", "label", "predicted", "success", "l0", "adversarial_label"}
    with np.load(out / "adversarial.npz") as z:
        assert z["index"].tolist() == [0, 1, 2, 3, 4]
        assert z["x_adv"].dtype == np.float32 and z["x_adv"].shape == (5, 3, 5, 5)
        x = np.load(data_path)["x"][:5]
        l0 = (z["x_adv"] != x).any(axis=1).reshape(5, -1).sum(1)
        assert l0.tolist() == [r["l0"] for r in rows]
    if saved["global"]["successes"]:
        assert (out / "examples.png").stat().st_size > 0


def test_attack_subcommand_reports_bad_input(files: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    model_path, data_path = files
    args = _parser().parse_args(["attack", "--model", str(model_path), "--data", str(data_path),
                                 "--out", str(tmp_path / "o"), "--epsilon", "0.3", "--quiet"])
    assert run(args) == 2
    assert "epsilon" in capsys.readouterr().err


def test_parse_indices() -> None:
    assert parse_indices("0,3,10-12") == [0, 3, 10, 11, 12]
    with pytest.raises(ValueError, match="indices"):
        parse_indices("3-1")
    with pytest.raises(ValueError, match="indices"):
        parse_indices("a")


def test_attack_precision_flag(files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_path, data_path = files
    base = ["attack", "--model", str(model_path), "--data", str(data_path), "--indices", "1-2", "--quiet"]
    args = _parser().parse_args([*base, "--out", str(tmp_path / "a"), "--precision", "float32"])
    assert run(args) == 0
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert saved["config"]["precision"] == "float32"
    assert saved["global"]["low_precision_evaluations"] == 0
    # a TorchScript model has no module to copy into bfloat16: one clear line, exit 2
    args = _parser().parse_args([*base, "--out", str(tmp_path / "b"), "--precision", "bfloat16"])
    assert run(args) == 2
    err = capsys.readouterr().err
    assert "precision" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        _parser().parse_args([*base, "--out", str(tmp_path / "c"), "--precision", "half"])
