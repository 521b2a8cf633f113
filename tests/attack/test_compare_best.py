"""``benchmarks/attack_compare.py``'s per-image best when methods stop at different image counts
(a time budget truncates a method to a prefix of the images). Expected values worked out by hand."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "attack_compare.py"


@pytest.fixture(scope="module")
def ac() -> ModuleType:
    spec = importlib.util.spec_from_file_location("attack_compare_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _methods() -> dict[str, dict]:
    return {
        "A": {"attempted": 4, "success": [True, True, False, True], "l0": [3, 5, 0, 2]},
        "B": {"attempted": 2, "success": [True, True], "l0": [4, 4]},  # stopped by its budget
        "C": {"attempted": 3, "success": [False, True, True], "l0": [9, 6, 7]},
        "D": {"attempted": 0, "status": "not installed (x)"},  # never ran: ignored
    }


def test_best_over_methods_that_reached_each_image(ac: ModuleType) -> None:
    ms = _methods()
    best = ac.per_image_best(ms)
    # image 0: A 3, B 4 (C failed); 1: A 5, B 4, C 6; 2: only C (A failed, B stopped); 3: only A
    assert best["l0"] == [3, 4, 7, 2]
    assert best["reached_by"] == [3, 3, 2, 1]
    assert best["images"] == 4 and best["mean_l0"] == pytest.approx(4.0) and best["median_l0"] == 3.5
    assert ms["A"]["gap_to_best"] == pytest.approx(1 / 3) and ms["A"]["is_best_on"] == 2
    assert ms["B"]["gap_to_best"] == pytest.approx(0.5) and ms["B"]["is_best_on"] == 1
    assert ms["C"]["gap_to_best"] == pytest.approx(1.0) and ms["C"]["is_best_on"] == 1
    assert "gap_to_best" not in ms["D"]


def test_best_on_the_images_every_method_attacked(ac: ModuleType) -> None:
    ms = _methods()
    common = ac.per_image_best(ms)["common"]
    assert common == {"attempted": 2, "images": 2, "mean_l0": 3.5, "median_l0": 3.5}
    assert ms["A"]["gap_to_best_common"] == pytest.approx(0.5) and ms["A"]["is_best_on_common"] == 1
    assert ms["B"]["gap_to_best_common"] == pytest.approx(0.5) and ms["B"]["is_best_on_common"] == 1
    assert ms["C"]["gap_to_best_common"] == pytest.approx(2.0) and ms["C"]["is_best_on_common"] == 0


def test_report_states_the_common_image_count(ac: ModuleType) -> None:
    ms = _methods()
    w = {"methods": ms, "n_correct": 4, "best": ac.per_image_best(ms)}
    text = "\n".join(ac._best_lines(w))
    assert "first **2** images" in text and "4 images" in text
    w_all = {"methods": {"A": ms["A"]}, "n_correct": 4}
    w_all["best"] = ac.per_image_best(w_all["methods"])
    assert "every method attacked" not in "\n".join(ac._best_lines(w_all))
