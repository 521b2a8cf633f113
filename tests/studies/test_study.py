"""``study_global`` and ``l0tre study global``: per-level records against a brute-force oracle,
the time attribution against an enumeration, resume, the output folder and the CLI."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from l0tre import evaluate
from l0tre.apps.study import LevelLog, attribute_seconds, levels_path, study_global, write_study
from l0tre.cli import main

from ..engine.oracle import brute_force_dm
from .conftest import Files, tiny_inputs, tiny_mlp

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run() -> tuple[torch.nn.Module, torch.Tensor, object]:
    model, x = tiny_mlp(2, bias=0.4), tiny_inputs(6, seed=3)  # true radii 2-5
    return model, x, study_global(model, x, epsilon=0.5, t_max=9)


def test_levels_against_brute_force(run: tuple[torch.nn.Module, torch.Tensor, object]) -> None:
    """After level t every input's lower bound is min(t, d_m) exactly, and d_m lies in its bounds."""
    model, x, study = run
    dm = torch.tensor([brute_force_dm(model, xi, steps=2)[0] for xi in x])
    assert int(dm.min()) >= 2 and int(dm.max()) >= 4, dm  # several levels, inputs converging at different t
    assert [r.t for r in study.levels] == list(range(1, len(study.levels) + 1))
    for r in study.levels:
        assert torch.equal(r.lower, torch.minimum(dm, torch.tensor(r.t))), r.t
        assert bool((r.upper >= dm).all())
    last = study.levels[-1]
    assert torch.equal(last.lower, study.result.lower) and torch.equal(last.upper, study.result.upper)


def test_records_match_separate_runs(run: tuple[torch.nn.Module, torch.Tensor, object]) -> None:
    """The record of level t is what an independent evaluate(t_max=t) ends with."""
    model, x, study = run
    for r in study.levels[:3]:
        res = evaluate(model, x, epsilon=0.5, t_max=r.t)
        assert torch.equal(r.lower, res.lower) and torch.equal(r.upper, res.upper)
        prev = study.levels[r.t - 2] if r.t > 1 else None
        want_active = torch.ones(6, dtype=torch.bool) if prev is None else prev.lower < prev.upper
        assert torch.equal(r.active, want_active)


def test_attribution_against_enumeration() -> None:
    """Seconds are shared in proportion to the grid points, counted here by enumerating subsets."""
    counts = torch.tensor([[2, 1, 0, 3, 2], [1, 1, 1, 1, 1], [4, 0, 2, 2, 1]])
    active = torch.tensor([True, False, True])
    for t in (1, 2, 3):
        points = [sum(int(torch.prod(row[list(s)])) for s in itertools.combinations(range(5), t)) for row in counts]
        got = attribute_seconds(counts, active, t, 6.0)
        total = points[0] + points[2]
        assert got.tolist() == pytest.approx([6.0 * points[0] / total, 0.0, 6.0 * points[2] / total])


def test_level_log_roundtrip_and_foreign(tmp_path: Path, run: tuple[torch.nn.Module, torch.Tensor, object]) -> None:
    _, _, study = run
    log = LevelLog(torch.ones(6, 9, dtype=torch.long), tmp_path / "l.pt", "abc")
    log.records = list(study.levels)
    log.save()
    again = LevelLog(torch.ones(6, 9, dtype=torch.long), tmp_path / "l.pt", "abc")
    assert [r.t for r in again.records] == [r.t for r in study.levels]
    assert all(torch.equal(a.upper, b.upper) for a, b in zip(again.records, study.levels, strict=True))
    with pytest.raises(ValueError, match="checkpoint: .*another model"):
        LevelLog(torch.ones(6, 9, dtype=torch.long), tmp_path / "l.pt", "other")


def test_resume_gives_the_uninterrupted_records(tmp_path: Path,
                                                run: tuple[torch.nn.Module, torch.Tensor, object]) -> None:
    """Stopped after level 1 (t_max=1), resumed to t_max=9: the same records as one run."""
    model, x, study = run
    ck = tmp_path / "ck.pt"
    first = study_global(model, x, epsilon=0.5, t_max=1, checkpoint=ck)
    assert [r.t for r in first.levels] == [1] and levels_path(ck).exists()
    second = study_global(model, x, epsilon=0.5, t_max=9, checkpoint=ck)
    assert [r.t for r in second.levels] == [r.t for r in study.levels]
    for a, b in zip(second.levels, study.levels, strict=True):
        assert torch.equal(a.lower, b.lower) and torch.equal(a.upper, b.upper) and torch.equal(a.active, b.active)


def test_bad_focus_is_refused_before_the_run() -> None:
    with pytest.raises(ValueError, match="focus"):
        study_global(tiny_mlp(0), tiny_inputs(2), focus=5)
    with pytest.raises(TypeError, match="focus"):
        study_global(tiny_mlp(0), tiny_inputs(2), focus=1.5)  # type: ignore[arg-type]


def test_write_study_folder(tmp_path: Path, run: tuple[torch.nn.Module, torch.Tensor, object]) -> None:
    _, _, study = run
    files = write_study(tmp_path, study, [10 + i for i in range(6)], {"note": "test"})
    names = {f.name for f in files}
    assert {"results.json", "index.html", "fig1a_input.png", "fig1b_global.png", "fig1c_time.png",
            "fig2_inputs.png"} <= names
    for f in files:
        if f.suffix == ".png":
            assert f.read_bytes()[:8] == PNG and f.stat().st_size > 2000
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["index"] for r in data["inputs"]] == list(range(10, 16))
    levels = data["levels"]
    for rec, row in zip(study.levels, levels, strict=True):
        lo = sum(r["lower"][rec.t - 1] for r in data["inputs"]) / 6
        up = sum(r["upper"][rec.t - 1] for r in data["inputs"]) / 6
        assert row["lower"] == pytest.approx(lo) and row["upper"] == pytest.approx(up)
        assert row["estimate"] == pytest.approx((lo + up) / 2)
        assert sum(r["seconds"][rec.t - 1] for r in data["inputs"]) == pytest.approx(row["seconds"])


def test_cli_study_global(files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    args = ["study", "global", "--model", str(files.models[0]), "--data", str(files.data), "--t-max", "2",
            "--out", str(out), "--quiet"]
    assert main(args) == 0
    for name in ("results.json", "index.html", "fig1a_input.png", "fig2_inputs.png", "evaluation/results.json",
                 "evaluation/checkpoint.pt"):
        assert (out / name).exists(), name
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["command"] == "study global" and len(data["inputs"]) == 8
    assert [lv["t"] for lv in data["levels"]] == [1, 2][: len(data["levels"])]
    capsys.readouterr()
    assert main(args) == 2  # a study is there: refused without --resume / --overwrite
    assert "already holds" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["levels"] == [{**lv, "seconds": pytest.approx(lv["seconds"])} for lv in data["levels"]]


def test_cli_study_errors(files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["study", "global", "--model", str(files.models[0]), "--data", str(files.data), "--out",
            str(tmp_path / "s"), "--quiet"]
    assert main([*base, "--focus", "99"]) == 2
    assert "--focus" in capsys.readouterr().err
    assert main(["study", "global", "--model", str(files.other_shape), "--data", str(files.data), "--out",
                 str(tmp_path / "s2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("l0tre: error:") and len(err.strip().splitlines()) == 1


def test_a_run_stopped_part_way_shows_its_partial_level(tmp_path: Path) -> None:
    """Interrupted inside level 3: levels 1-2 are records, the partial level holds the final bounds."""
    model, x = tiny_mlp(2, bias=0.4), tiny_inputs(6, seed=3)

    raised: list[bool] = []

    def stop(snap: object) -> None:
        if snap.t == 2 and not snap.level_complete and not raised:  # type: ignore[attr-defined]
            raised.append(True)  # once: the final snapshot is handed over again
            raise KeyboardInterrupt

    study = study_global(model, x, epsilon=0.5, t_max=9, report_every=1e-9, on_snapshot=stop)
    assert study.result.stopped == "interrupted" and [r.t for r in study.levels] == [1, 2]
    part = study.partial_level()
    assert part is not None and part.t == 3
    assert torch.equal(part.lower, study.result.lower) and torch.equal(part.upper, study.result.upper)
    assert torch.equal(part.active, study.levels[1].lower < study.levels[1].upper)
    files = write_study(tmp_path, study, list(range(6)), {})
    assert json.loads((tmp_path / "results.json").read_text())["partial_level"]["t"] == 3
    assert all(f.read_bytes()[:8] == PNG for f in files if f.suffix == ".png")
    done = study_global(model, x, epsilon=0.5, t_max=9)
    assert done.partial_level() is None


def test_certified_lower_bounds_per_level() -> None:
    """Certified bounds hold for all real values, so never exceed the grid lower bound or the true
    grid radius; they are recorded at every level."""
    model, x = tiny_mlp(2, bias=0.4), tiny_inputs(4, seed=3)
    study = study_global(model, x, epsilon=0.5, t_max=3, certify=True, certify_time_limit=10.0)
    dm = torch.tensor([brute_force_dm(model, xi, steps=2)[0] for xi in x])
    assert [r.t for r in study.levels] == [1, 2, 3]
    for r in study.levels:
        assert r.certified_lower is not None
        assert bool((r.certified_lower <= r.lower).all()) and bool((r.certified_lower <= dm).all())
    assert int(study.levels[0].certified_lower.min()) >= 1  # level 1 is proven here (d_m >= 2 for all)


def test_time_budget_from_now_counts_this_call_only(tmp_path: Path) -> None:
    """A resumed study whose checkpoint already holds more seconds than the budget: the total
    budget stops it at once, a budget from now lets it finish."""
    model, x = tiny_mlp(2, bias=0.4), tiny_inputs(6, seed=3)
    ck = tmp_path / "ck.pt"
    study_global(model, x, epsilon=0.5, t_max=1, checkpoint=ck)
    spent = float(torch.load(ck, weights_only=True)["seconds"])
    budget = spent / 2
    total = study_global(model, x, epsilon=0.5, t_max=9, checkpoint=ck, time_budget=budget)
    assert total.result.stopped == "time_budget" and total.result.t == 1
    fresh = study_global(model, x, epsilon=0.5, t_max=9, checkpoint=ck, time_budget=budget + 600,
                         time_budget_from_now=True)
    assert fresh.result.stopped in ("converged", "t_max")
