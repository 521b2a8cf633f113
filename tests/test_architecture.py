"""The package's layers (docs/architecture.md): imports only go downwards, and the engine's
rooms stay small. Imports are read from the source with ``ast`` (also those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "l0tre"

#: package part → the parts it must never import (higher layers)
FORBIDDEN = {
    "engine": ("cli", "report", "outdir", "apps", "api", "progress", "cluster"),
    "execution": ("engine", "cli", "report", "outdir", "apps", "api", "certify", "cluster"),
    "cluster": ("cli", "report", "outdir", "apps", "api", "progress", "figures"),  # an executor (Ray) above the engine
    "certify": ("engine", "cli", "report", "apps", "api", "execution"),
    "apps": ("cli", "report"),  # applications drive the engine through api.prepare (architecture.md)
    "api": ("apps", "cli", "report", "outdir", "figures"),
    "models": ("engine", "execution", "certify", "apps", "cli", "report", "api"),
    "classifier": ("engine", "execution", "certify", "apps", "cli", "report", "api", "outdir"),
    "objectives": ("engine", "execution", "certify", "apps", "cli", "report", "api", "outdir"),
    "result": ("engine", "execution", "certify", "apps", "cli", "report", "api", "outdir"),
    "report": ("cli", "engine", "apps", "api"),
    "readers": ("engine", "execution", "certify", "apps", "cli", "report", "api", "outdir", "figures"),
    "figures": ("cli", "engine", "execution", "certify", "api", "report", "outdir"),  # draws app results too
    "outdir": ("cli", "engine", "api", "report"),  # above the applications: it writes their results
}


def _imported(path: Path) -> set[str]:
    """Top-level ``l0tre`` parts imported by ``path`` (absolute and relative imports)."""
    module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    parts: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            elif node.module:
                names = [node.module]
        for name in names:
            bits = name.split(".")
            if bits[0] == "l0tre" and len(bits) > 1:
                parts.add(bits[1])
    return parts


def _part(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_only_go_down(path: Path) -> None:
    part = _part(path)
    bad = _imported(path) & set(FORBIDDEN.get(part, ()))
    assert not bad, f"{path.relative_to(SRC)} ({part}) imports a higher layer: {sorted(bad)}"


def test_the_layer_check_sees_relative_imports() -> None:
    """The reader resolves ``from ..cli import x`` inside engine/ to the ``cli`` part."""
    probe = SRC / "engine" / "_probe_for_test.py"
    try:
        probe.write_text("def f():\n    from ..cli import main\n    from . import loop\n")
        assert _imported(probe) == {"cli", "engine"}
    finally:
        probe.unlink()


def test_engine_modules_stay_small() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in (SRC / "engine").glob("*.py")}
    assert sizes and max(sizes.values()) <= 400, sizes


def test_the_run_loop_class_stays_small() -> None:
    tree = ast.parse((SRC / "engine" / "loop.py").read_text())
    engine = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Engine")
    assert engine.end_lineno is not None and engine.end_lineno - engine.lineno + 1 <= 200
