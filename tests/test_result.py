"""``l0tre.result.Result``: derived numbers on hand-made tensors, serialisation, deep copies."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import torch

from l0tre.result import Result


def make(**over: Any) -> Result:
    """Four inputs, n = 6 features; input 3 has no adversarial example (upper = n)."""
    kw: dict[str, Any] = {
        "lower": torch.tensor([1, 2, 0, 6]),
        "upper": torch.tensor([1, 4, 2, 6]),
        "found": torch.tensor([True, True, True, False]),
        "adversarial": torch.arange(16, dtype=torch.float32).view(4, 1, 2, 2) / 16,
        "adversarial_label": torch.tensor([2, 0, 1, -1]),
        "predicted": torch.tensor([0, 1, 2, 2]),
        "labels": torch.tensor([0, 1, 1, 2]),
        "n_features": 6,
        "epsilon": 0.5,
        "features": "pixel",
        "t": 2,
        "level_complete": True,
        "certified_lower": torch.tensor([1, 1, 0, 5]),
        "evaluations": 1234,
        "seconds": 2.5,
        "history": [{"t": 1.0, "seconds": 1.0, "evaluations": 600.0, "lower": 1.0, "upper": 4.0}],
        "level_seconds": [1.0, 1.5],
        "stopped": "t_max",
    }
    kw.update(over)
    return Result(**kw)


def assert_same(a: Result, b: Result) -> None:
    for f in fields(Result):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if isinstance(va, torch.Tensor):
            assert isinstance(vb, torch.Tensor) and va.dtype == vb.dtype and torch.equal(va, vb), f.name
        else:
            assert va == vb, f.name


def test_global_numbers_by_hand() -> None:
    r = make()
    assert r.global_lower == 9 / 4 and r.global_upper == 13 / 4
    assert r.estimate == 11 / 4  # Def. 5: the centre of [9/4, 13/4]
    assert r.radius == 1 / 2
    assert r.converged.tolist() == [True, False, False, True]
    assert r.accuracy == 3 / 4  # input 2: predicted 2, label 1
    assert r.global_certified_lower == 7 / 4
    assert r.lower_kind == ["certified", "grid", "certified", "grid"]


def test_without_labels_or_certificates_and_empty() -> None:
    r = make(labels=None, certified_lower=None)
    assert r.accuracy is None and r.global_certified_lower is None
    assert r.lower_kind == ["grid"] * 4
    assert "certified_lower" not in r.summary()
    assert all("certified_lower" not in row and row["label"] is None for row in r.to_dict()["inputs"])
    e = make(lower=torch.tensor([], dtype=torch.long), upper=torch.tensor([], dtype=torch.long),
             found=torch.tensor([], dtype=torch.bool), labels=torch.tensor([], dtype=torch.long),
             predicted=torch.tensor([], dtype=torch.long), certified_lower=None)
    assert math.isnan(e.global_lower) and math.isnan(e.global_upper) and e.accuracy is None


def test_summary_and_to_dict_by_hand() -> None:
    r = make()
    assert r.summary() == {
        "lower": 2.25, "upper": 3.25, "estimate": 2.75, "radius": 0.5, "t": 2, "evaluations": 1234,
        "seconds": 2.5, "accuracy": 0.75, "converged": 2, "inputs": 4, "lower_bound_claimed": True,
        "certified_lower": 1.75,
    }
    d = r.to_dict()
    assert d["inputs"] == [
        {"index": 0, "label": 0, "predicted": 0, "lower": 1, "upper": 1, "lower_kind": "certified",
         "converged": True, "found": True, "adversarial_label": 2, "lower_claimed": True, "upper_claimed": True,
         "certified_lower": 1},
        {"index": 1, "label": 1, "predicted": 1, "lower": 2, "upper": 4, "lower_kind": "grid",
         "converged": False, "found": True, "adversarial_label": 0, "lower_claimed": True, "upper_claimed": True,
         "certified_lower": 1},
        {"index": 2, "label": 1, "predicted": 2, "lower": 0, "upper": 2, "lower_kind": "certified",
         "converged": False, "found": True, "adversarial_label": 1, "lower_claimed": True, "upper_claimed": True,
         "certified_lower": 0},
        {"index": 3, "label": 2, "predicted": 2, "lower": 6, "upper": 6, "lower_kind": "grid",
         "converged": True, "found": False, "adversarial_label": None, "lower_claimed": True, "upper_claimed": True,
         "certified_lower": 5},
    ]
    assert (d["n_features"], d["epsilon"], d["features"], d["level_complete"], d["stopped"]) == (
        6, 0.5, "pixel", True, "t_max")
    assert d["history"] == [{"t": 1.0, "seconds": 1.0, "evaluations": 600.0, "lower": 1.0, "upper": 4.0}]
    assert d["level_seconds"] == [1.0, 1.5]
    assert "adversarial" not in d
    assert json.loads(json.dumps(d)) == d  # plain JSON
    full = r.to_dict(include_adversarial=True)
    assert full["adversarial"] == [[[[(4 * i + 2 * h + w) / 16 for w in range(2)] for h in range(2)]] for i in range(4)]
    assert json.loads(json.dumps(full)) == full


def test_state_holds_every_field() -> None:
    r = make()
    st = r.state()
    assert set(st) == {f.name for f in fields(Result)}
    assert all(st[f.name] is getattr(r, f.name) for f in fields(Result))
    assert_same(Result(**st), r)


@pytest.mark.parametrize("variant", ["full", "bare"])
def test_save_load_round_trip(tmp_path: Path, variant: str) -> None:
    r = make() if variant == "full" else make(labels=None, certified_lower=None, history=[], level_seconds=[])
    path = tmp_path / "sub" / "r.pt"
    r.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["r.pt"]  # no temp file left behind
    back = Result.load(path)
    assert_same(back, r)
    assert back.to_dict(include_adversarial=True) == r.to_dict(include_adversarial=True)
    r.save(path)  # overwriting works too
    assert_same(Result.load(path), r)


def test_load_refuses_other_files(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a result")
    with pytest.raises(ValueError, match="path: .*not a readable l0tre result"):
        Result.load(tmp_path / "junk.pt")
    torch.save({"format": "something else", "lower": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="path: .*not an l0tre result file"):
        Result.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="path: no result file"):
        Result.load(tmp_path / "missing.pt")


def test_copy_is_deep() -> None:
    r = make()
    c = r.copy()
    assert_same(c, r)
    c.lower[0] += 5
    c.upper.zero_()
    c.adversarial.fill_(-1.0)
    c.certified_lower[1] = 4  # type: ignore[index]
    c.labels[0] = 9  # type: ignore[index]
    c.history[0]["t"] = 99.0
    c.history.append({"t": 3.0})
    c.level_seconds.append(7.0)
    c.evaluations = 0
    assert_same(r, make())  # the original is untouched
