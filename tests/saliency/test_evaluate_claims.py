"""``l0tre.evaluate(..., pixels=...)`` never claims a lower bound about the image unless every
feature is searched: ``Result``, ``results.json`` / ``per_input.csv`` and the report say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import l0tre
from l0tre.outdir import read_per_input, write_outputs
from l0tre.report import build_report

from .oracle import tiny_net


def _x(seed: int, n: int = 3, c: int = 3, size: int = 6) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rule", ["sample:7", "sample:5:3", "top:7", [0, 5, 9], "mask"])
def test_a_restricted_run_never_claims_a_lower_bound(rule: object) -> None:
    net = tiny_net(2, 3, size=6)
    x = _x(4)
    pixels = torch.zeros(6, 6, dtype=torch.bool).index_fill_(1, torch.tensor([2]), True) if rule == "mask" else rule
    res = l0tre.evaluate(net, x, t_max=2, pixels=pixels)
    assert res.n_features < 36
    assert res.lower_bound_claimed is False
    assert res.lower_kind == ["selection"] * 3
    d = res.to_dict()
    assert d["lower_bound_claimed"] is False and d["global"]["lower_bound_claimed"] is False
    assert all(row["lower_claimed"] is False and row["lower_kind"] == "selection" for row in d["inputs"])
    assert d["pixels"] == res.pixels != "all"
    if not isinstance(pixels, str):
        assert res.pixels == ("indices:3" if isinstance(rule, list) else "mask:6")
    if isinstance(pixels, str):
        assert res.pixels == str(l0tre.engine.features.PixelRule.parse(rule))
    # the upper bound is still a claim about the image: each adversarial example flips the label
    with torch.no_grad():
        for i in res.found.nonzero().squeeze(1).tolist():
            assert int(net(res.adversarial[i : i + 1]).argmax()) != int(res.predicted[i])


@pytest.mark.parametrize("rule", [None, "all", "sample:36", "top:99"])
def test_a_full_run_claims_its_lower_bound(rule: object) -> None:
    """Every feature searched (``K >= n`` is the whole space): the lower bound is claimed."""
    res = l0tre.evaluate(tiny_net(2, 3, size=6), _x(5), t_max=1, pixels=rule)
    assert res.n_features == 36 and res.pixels == "all" and res.lower_bound_claimed is True
    assert set(res.lower_kind) == {"grid"}
    assert res.to_dict()["global"]["lower_bound_claimed"] is True


def test_the_restricted_bounds_are_within_the_selection_only() -> None:
    """One pixel selected: nothing found means ``lower == upper == 1`` (the selection's size),
    which is no bound about the image (the full run has inputs with a true radius 0 or 2): the
    lower bound and such an upper bound are marked as not claimed; a found example's upper
    bound is claimed and never below the full run's exact one."""
    net = tiny_net(2, 1, size=4)
    x = _x(8, n=6, c=1, size=4)
    full = l0tre.evaluate(net, x, t_max=2)
    restricted = l0tre.evaluate(net, x, t_max=2, pixels=[0])
    assert bool(full.converged.all()) and full.lower_bound_claimed
    assert bool((restricted.upper != full.upper).any())  # the selection's numbers differ from the image's
    rows = restricted.to_dict()["inputs"]
    for i, row in enumerate(rows):
        assert row["lower_claimed"] is False and row["upper_claimed"] is bool(restricted.found[i])
        if row["upper_claimed"]:
            assert row["upper"] >= int(full.upper[i])
    assert all(row["upper_claimed"] for row in full.to_dict()["inputs"])


def test_outputs_and_report_say_not_claimed(tmp_path: Path) -> None:
    x = _x(6)
    res = l0tre.evaluate(tiny_net(2, 3, size=6), x, t_max=1, pixels="sample:4")
    data = write_outputs(tmp_path, res, [10, 11, 12], x, {"pixels": "sample:4"})
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == data
    assert on_disk["lower_bound_claimed"] is False and on_disk["pixels"] == "sample:4"
    assert on_disk["global"]["lower_bound_claimed"] is False
    rows = read_per_input(tmp_path)
    assert [r["lower_claimed"] for r in rows] == [False] * 3
    assert [r["upper_claimed"] for r in rows] == res.found.tolist() and {r["lower_kind"] for r in rows} == {"selection"}
    build_report(tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert "lower bound not claimed" in page and "not claimed (pixels sample:4" in page
