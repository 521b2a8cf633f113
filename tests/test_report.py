"""Reports (:mod:`l0tre.report`) of output folders written by real small runs of the engine.

Each folder is written the way ``l0tre evaluate`` writes it (:func:`l0tre.outdir.write_outputs`
after every snapshot), on a tiny CNN: a complete grid run, a certified run, a run without any
adversarial example, a run stopped by its time budget and an interrupted one.
"""

from __future__ import annotations

import ast
import html
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import l0tre
import l0tre.report as report_module
from l0tre.api import prepare
from l0tre.engine import drive
from l0tre.outdir import ADVERSARIAL_NPZ, OUTPUT_FILES, RESULTS_JSON, write_outputs
from l0tre.report import FIGURES, INDEX_HTML, build_report, load_results
from tests.cli.conftest import SteadyNet, TinyNet, _one_thread, one_torch_thread  # noqa: F401 (fixture)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NOT_LINKED = {INDEX_HTML, "checkpoint.pt"}  # the page itself; the engine's resumable state


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """6 random 1x6x6 images and labels: TinyNet's predictions, one of them wrong."""
    torch.manual_seed(0)
    net = TinyNet().eval()
    x = torch.from_numpy(np.random.default_rng(0).random((6, 1, 6, 6)).astype(np.float32))
    with torch.no_grad():
        y = net(x).argmax(1)
    y[5] = (y[5] + 1) % 3
    return x, y


def _tiny() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def _run(out: Path, model: torch.nn.Module, *, stop_at: Callable[[l0tre.Result], bool] | None = None,
         **options: Any) -> l0tre.Result:
    """Evaluate ``model`` on the 6 inputs, writing the output files after every snapshot as the
    CLI does; Ctrl-C lands in the writer at the first snapshot where ``stop_at`` holds."""
    x, y = _inputs()
    engine = prepare(model, x, labels=y, batch_size=64, **options)
    config = {"model_name": type(model).__name__, "data_name": "random 1x6x6", "bounds": [0.0, 1.0],
              "data_notes": ["six random images"]}

    def on_snapshot(snap: l0tre.Result) -> None:
        if stop_at is not None and snap.stopped == "running" and stop_at(snap):
            raise KeyboardInterrupt
        write_outputs(out, snap, list(range(x.shape[0])), x, config)

    return drive(engine, on_snapshot)


def _inside_level_2(snap: l0tre.Result) -> bool:
    """A snapshot taken while level 2 runs."""
    return snap.t == 1 and not snap.level_complete


RUNS: dict[str, Callable[[Path], l0tre.Result]] = {
    "grid": lambda out: _run(out, _tiny(), t_max=2),
    "certified": lambda out: _run(out, _tiny(), t_max=2, certify=True),
    "no_examples": lambda out: _run(out, SteadyNet().eval(), t_max=1),
    "time_budget": lambda out: _run(out, SteadyNet().eval(), t_max=3, time_budget=0.01, report_every=0.01),
    "interrupted": lambda out: _run(out, SteadyNet().eval(), t_max=2, report_every=0.01, stop_at=_inside_level_2),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, l0tre.Result, list[Path]]]:
    """Every run of :data:`RUNS` with its folder, final result and the report's files."""
    done = {}
    with one_torch_thread():
        for name, run in RUNS.items():
            out = tmp_path_factory.mktemp(name)
            final = run(out)
            done[name] = (out, final, build_report(out))
    return done


def _check_png(path: Path) -> None:
    """``path`` is a complete PNG that PIL decodes."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path.name
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG" and img.width > 100 and img.height > 100, path.name


def _references(page: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r"(?:src|href)='([^']*)'", page)]


@pytest.mark.parametrize("name", list(RUNS))
def test_every_png_is_valid(runs: dict[str, Any], name: str) -> None:
    out, _, files = runs[name]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(f.name for f in files if f.suffix == ".png")
    assert {"convergence.png", "per_input.png", "level_time.png"} <= set(pngs) <= set(FIGURES)
    for p in pngs:
        _check_png(out / p)
    assert files[-1] == out / INDEX_HTML


@pytest.mark.parametrize("name", list(RUNS))
def test_index_references_exactly_the_files_there(runs: dict[str, Any], name: str) -> None:
    out, _, _ = runs[name]
    refs = _references((out / INDEX_HTML).read_text(encoding="utf-8"))
    assert len(refs) == len(set(refs))
    present = {p.name for p in out.iterdir()} - NOT_LINKED
    assert set(refs) == present
    assert set(OUTPUT_FILES) <= present


@pytest.mark.parametrize("name", list(RUNS))
def test_no_temp_files_left(runs: dict[str, Any], name: str) -> None:
    out, _, _ = runs[name]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


def test_grid_run(runs: dict[str, Any]) -> None:
    out, final, _ = runs["grid"]
    page = (out / INDEX_HTML).read_text(encoding="utf-8")
    assert final.stopped in ("t_max", "converged") and final.t == 2
    assert (out / "adversarial.png").is_file()
    assert "certified lower" not in page
    assert "Note: six random images" in page
    # the summary shows the run's numbers
    assert f"<th>global lower bound</th><td>{final.global_lower:,.3f}</td>" in page
    assert f"<th>global upper bound</th><td>{final.global_upper:,.3f}</td>" in page
    assert f"<th>stopped</th><td>{final.stopped}</td>" in page
    rows = re.findall(r"<tr(?: class='conv')?><td>", page.split("<h2>Inputs</h2>")[1])
    assert len(rows) == 6


def test_certified_run(runs: dict[str, Any]) -> None:
    out, final, _ = runs["certified"]
    assert final.certified_lower is not None
    page = (out / INDEX_HTML).read_text(encoding="utf-8")
    assert f"<th>certified lower bound</th><td>{final.global_certified_lower:,.3f}</td>" in page
    assert "<th>certified lower</th>" in page  # the per-input column
    data = json.loads((out / RESULTS_JSON).read_text())
    assert all(0 <= r["certified_lower"] <= r["lower"] <= r["upper"] for r in data["inputs"])


def test_run_without_examples(runs: dict[str, Any]) -> None:
    out, final, _ = runs["no_examples"]
    assert not bool(final.found.any())
    assert not (out / "adversarial.png").exists()
    assert "no adversarial example found yet" in (out / INDEX_HTML).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["time_budget", "interrupted"])
def test_partial_run(runs: dict[str, Any], name: str) -> None:
    out, final, _ = runs[name]
    data = json.loads((out / RESULTS_JSON).read_text())
    assert final.stopped == data["stopped"] == name
    assert data["global"]["t"] < (3 if name == "time_budget" else 2)
    if name == "interrupted":  # stopped inside level 2, with level 1 complete
        assert data["global"]["t"] == 1 and data["level_complete"] is False
    page = (out / INDEX_HTML).read_text(encoding="utf-8")
    assert f"<th>stopped</th><td>{name}</td>" in page
    assert f"<th>last complete level t</th><td>{data['global']['t']}</td>" in page


def test_rebuild_removes_stale_figures(runs: dict[str, Any], tmp_path: Path) -> None:
    """A folder rebuilt after its adversarial examples are gone loses the old figure."""
    out, _, _ = runs["grid"]
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in out.iterdir():
        copy.joinpath(f.name).write_bytes(f.read_bytes())
    (copy / ADVERSARIAL_NPZ).write_bytes(b"not a zip file")
    files = build_report(copy)
    assert not (copy / "adversarial.png").exists() and copy / "adversarial.png" not in files
    page = (copy / INDEX_HTML).read_text(encoding="utf-8")
    assert "adversarial.npz is not readable" in page
    assert "adversarial.png" not in _references(page)


def test_report_without_matplotlib(runs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, _, _ = runs["grid"]
    (tmp_path / RESULTS_JSON).write_bytes((out / RESULTS_JSON).read_bytes())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    assert build_report(tmp_path) == [tmp_path / INDEX_HTML]
    page = (tmp_path / INDEX_HTML).read_text(encoding="utf-8")
    assert "matplotlib is not installed" in page and _references(page) == [RESULTS_JSON]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such folder"):
        build_report(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="results.json"):
        build_report(tmp_path)
    (tmp_path / RESULTS_JSON).write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        build_report(tmp_path)
    (tmp_path / RESULTS_JSON).write_text(json.dumps({"global": {}}))
    with pytest.raises(ValueError, match="needs 'global' and 'inputs'"):
        load_results(tmp_path)


def test_report_reads_through_outdir_only() -> None:
    """report.py reads files through l0tre.outdir and never imports the CLI."""
    source = Path(report_module.__file__).read_text()
    tree = ast.parse(source)
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and (m == "cli" or m.startswith(("cli.", "l0tre.cli"))) for m in modules)
    for call in ("np.load(", "json.load", "open(", "read_text(", "read_bytes("):
        assert call not in source, call
