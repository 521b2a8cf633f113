"""``compare`` and ``l0tre compare``: per-model bounds against brute force and separate runs, the
ranking against the bounds, deep levels on a subset, resume without redoing work, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from l0tre import evaluate
from l0tre.apps.compare import compare, write_compare
from l0tre.cli import main

from ..engine.oracle import brute_force_dm
from .conftest import ZOO, Files, tiny_inputs, tiny_mlp

PNG = b"\x89PNG\r\n\x1a\n"


def _models() -> dict[str, torch.nn.Module]:
    return {f"m{k}": tiny_mlp(seed, bias) for k, (seed, bias) in enumerate(ZOO)}


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, dict[str, torch.nn.Module], torch.Tensor, Path]:
    models, x = _models(), tiny_inputs(8, seed=3)
    ck = tmp_path_factory.mktemp("cmp") / "runs"
    comp = compare(models, x, labels=torch.arange(8) % 3, epsilon=0.5, t_max=3, deep_limit=5, checkpoint_dir=ck)
    return comp, models, x, ck


def test_levels_against_brute_force_and_separate_runs(compared: tuple) -> None:
    comp, models, x, _ = compared
    assert comp.stopped == "done" and comp.complete_levels() == [1, 2, 3]
    for name, model in models.items():
        dm = torch.tensor([brute_force_dm(model, xi, steps=2)[0] for xi in x])
        for t in (1, 2, 3):
            rec = comp.record(name, t)
            size = 8 if t == 1 else 5  # levels t >= 2 on the first deep_limit inputs
            assert rec is not None and rec.lower.numel() == size
            assert torch.equal(rec.lower, torch.minimum(dm[:size], torch.tensor(t)))  # exact grid lower bound
            ref = evaluate(model, x[:size], epsilon=0.5, t_max=t)
            assert torch.equal(rec.upper, ref.upper) and torch.equal(rec.lower, ref.lower)


def test_ranking_order_matches_the_bounds(compared: tuple) -> None:
    comp = compared[0]
    for t in comp.complete_levels():
        rank = comp.ranking(t)
        est = {n: float((comp.record(n, t).lower + comp.record(n, t).upper).double().mean()) / 2 for n in comp.names}
        assert [est[n] for n in rank.order] == sorted(est.values(), reverse=True)
        assert len(rank.pairs) == 3 and all(p.mean >= 0 for p in rank.pairs)
        for p, sep in zip(rank.pairs, rank.separated, strict=True):
            a, b = comp.record(p.a, t), comp.record(p.b, t)
            assert sep == (a.global_lower > b.global_upper)
            diff = ((a.lower + a.upper) - (b.lower + b.upper)).double().numpy() / 2
            assert p.mean == pytest.approx(float(diff.mean()))
            assert p.p_holm >= p.p  # the family correction never lowers a p-value


def test_table_numbers(compared: tuple) -> None:
    comp = compared[0]
    for row in comp.table():
        rec = comp.record(row["model"], row["t"])
        est = (rec.lower + rec.upper).double().numpy() / 2
        assert row["estimate_mean"] == pytest.approx(row["estimate"]) == pytest.approx(float(est.mean()))
        assert row["estimate_std"] == pytest.approx(float(np.std(est, ddof=1)))
        assert row["radius"] == pytest.approx((row["upper"] - row["lower"]) / 2)


def test_resume_redoes_nothing(compared: tuple) -> None:
    comp, models, x, ck = compared
    stages: list[tuple[str, int, int]] = []
    again = compare(models, x, labels=torch.arange(8) % 3, epsilon=0.5, t_max=3, deep_limit=5, checkpoint_dir=ck,
                    on_stage=lambda n, t, s: stages.append((n, t, s)))
    assert stages == []
    for name in comp.names:
        for a, b in zip(again.levels[name], comp.levels[name], strict=True):
            assert a.t == b.t and torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper)


def test_anytime_level_by_level(tmp_path: Path, compared: tuple) -> None:
    """t_max=1 first: every model has level 1; asked again for t_max=3 it continues each model and
    ends where one run ends."""
    comp, models, x, _ = compared
    stages: list[tuple[str, int, int]] = []
    first = compare(models, x, epsilon=0.5, t_max=1, deep_limit=5, checkpoint_dir=tmp_path,
                    on_stage=lambda n, t, s: stages.append((n, t, s)))
    assert first.complete_levels() == [1] and [s[:2] for s in stages] == [("m0", 1), ("m1", 1), ("m2", 1)]
    stages.clear()
    full = compare(models, x, epsilon=0.5, t_max=3, deep_limit=5, checkpoint_dir=tmp_path,
                   on_stage=lambda n, t, s: stages.append((n, t, s)))
    assert stages == [(n, t, 5) for t in (2, 3) for n in ("m0", "m1", "m2")]  # level-major; level 1 not redone
    for name in comp.names:
        assert [r.t for r in full.levels[name]] == [r.t for r in comp.levels[name]]
        for a, b in zip(full.levels[name], comp.levels[name], strict=True):
            assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper)


def test_write_compare(tmp_path: Path, compared: tuple) -> None:
    comp = compared[0]
    files = write_compare(tmp_path, comp, {"note": "x"}, test_accuracy=[0.5, 0.6, 0.7])
    assert {f.name for f in files} == {"results.json", "fig8_bounds.png", "fig9_spread.png", "pairwise.png",
                                       "accuracy.png", "index.html"}
    for f in files:
        if f.suffix == ".png":
            assert f.read_bytes()[:8] == PNG and f.stat().st_size > 2000
    data = json.loads((tmp_path / "results.json").read_text())
    assert [m["test_accuracy"] for m in data["models"]] == [0.5, 0.6, 0.7]
    assert [r["t"] for r in data["rankings"]] == [1, 2, 3] and data["statements"]
    assert data["per_input"]["m0"][1]["lower"] == comp.record("m0", 2).lower.tolist()


def test_errors() -> None:
    x = tiny_inputs(3)
    with pytest.raises(ValueError, match="models: expected at least 2"):
        compare({"a": tiny_mlp(0)}, x)
    with pytest.raises(TypeError, match="models"):
        compare(tiny_mlp(0), x)  # type: ignore[arg-type]
    big = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    with pytest.raises(ValueError, match="models: big does not run on inputs of shape 1x3x3"):
        compare({"a": tiny_mlp(0), "big": big}, x)
    with pytest.raises(ValueError, match="max_evaluations"):  # the engine's guard, for every model's level
        compare({"a": tiny_mlp(0), "b": tiny_mlp(1)}, x, t_max=2, max_evaluations=50)
    with pytest.raises(ValueError, match="deep_limit"):
        compare({"a": tiny_mlp(0), "b": tiny_mlp(1)}, x, deep_limit=0)


def test_declared_shapes_are_named() -> None:
    from l0tre import Classifier

    a = Classifier(tiny_mlp(0), input_shape=(1, 3, 3))
    b = Classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)), input_shape=(1, 4, 4))
    with pytest.raises(ValueError, match=r"models: expected every model to take the inputs' shape 1x3x3, got "
                                         r"a: 1x3x3, b: 1x4x4"):
        compare({"a": a, "b": b}, tiny_inputs(2))


def test_cli_compare(files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--models", *map(str, files.models), "--data", str(files.data), "--t-max", "2",
            "--out", str(out), "--quiet", "--limit", "6", "--test-accuracy"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "t=1 (6 inputs)" in printed and "report:" in printed
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["names"] == ["m0", "m1", "m2"] and data["complete_levels"] == [1, 2]
    data_y = np.load(files.data)["y"]  # the accuracy on all 8 images, the table's on the 6 compared
    for m, path in zip(data["models"], files.models, strict=True):
        model = torch.jit.load(str(path))
        pred = model(torch.from_numpy(np.load(files.data)["x"])).argmax(1).numpy()
        assert m["test_accuracy"] == pytest.approx(float((pred == data_y).mean()))
        assert m["accuracy"] == pytest.approx(float((pred[:6] == data_y[:6]).mean()))
    for name in ("index.html", "fig8_bounds.png", "fig9_spread.png", "pairwise.png", "accuracy.png"):
        assert (out / name).exists(), name
    assert main(args) == 2
    assert "already holds a comparison" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["table"] == data["table"]
    assert main([*args, "--overwrite"]) == 0


def test_cli_compare_shape_mismatch(files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["compare", "--models", str(files.models[0]), str(files.other_shape), "--data", str(files.data),
                 "--out", str(tmp_path / "c"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("l0tre: error:") and len(err.strip().splitlines()) == 1
    assert "shape" in err
    code = main(["compare", "--models", str(files.models[0]), "--data", str(files.data), "--out", str(tmp_path / "d")])
    assert code == 2 and "at least 2" in capsys.readouterr().err


def test_a_model_converged_early_is_carried_to_later_levels() -> None:
    """tiny_mlp(1, 0.8) flips every input with one pixel (d_m = 0): its level 2 is its level 1,
    with no work, and the ranking at t = 2 exists."""
    models = {"weak": tiny_mlp(1, 0.8), "m0": tiny_mlp(*ZOO[0])}
    x = tiny_inputs(8, seed=3)
    assert all(brute_force_dm(models["weak"], xi, steps=2)[0] == 0 for xi in x)
    comp = compare(models, x, epsilon=0.5, t_max=2)
    one, two = comp.record("weak", 1), comp.record("weak", 2)
    assert one is not None and two is not None and comp.complete_levels() == [1, 2]
    assert torch.equal(two.lower, one.lower) and torch.equal(two.upper, one.upper)
    assert not bool(two.active.any()) and two.seconds == 0.0 and two.evaluations == 0
    assert comp.ranking(2).order == ["m0", "weak"]
