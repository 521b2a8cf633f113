"""The CLI package: one module per command, one parser for each option type, limits on size."""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
from pathlib import Path

import pytest

import l0tre.cli
from l0tre.cli import build_parser, parsing

COMMANDS = ("evaluate", "info", "models", "attack", "report", "train", "demo", "study", "compare", "saliency",
            "coverage")
CLI_DIR = Path(l0tre.cli.__file__).parent
SRC = CLI_DIR.parent


@pytest.mark.parametrize("name", COMMANDS)
def test_one_module_per_command(name: str) -> None:
    module = importlib.import_module(f"l0tre.cli.{name}")
    assert callable(module.add_parser) and callable(module.run)
    sub = argparse.ArgumentParser(prog="l0tre").add_subparsers(dest="command")
    module.add_parser(sub)
    assert list(sub.choices) == [name]


def test_parser_lists_every_command() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert tuple(sub.choices) == COMMANDS


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


@pytest.mark.parametrize("path", sorted(CLI_DIR.glob("*.py")), ids=lambda p: p.name)
def test_module_size_docstrings_and_hints(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) < 400
    tree = ast.parse(text)
    assert ast.get_docstring(tree), "module docstring"
    for fn in _functions(tree):
        assert fn.end_lineno is not None and fn.end_lineno - fn.lineno < 65, fn.name
        assert ast.get_docstring(fn), f"{fn.name}: docstring"
        assert fn.returns is not None, f"{fn.name}: return type"
        for arg in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]:
            assert arg.annotation is not None or arg.arg in ("self", "cls"), f"{fn.name}({arg.arg})"


def test_one_parse_indices() -> None:
    defined = [p.name for p in CLI_DIR.glob("*.py")
               if any(fn.name == "parse_indices" for fn in _functions(ast.parse(p.read_text())))]
    assert defined == ["parsing.py"]
    from l0tre.cli import attack

    assert attack.parse_indices is parsing.parse_indices


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = "l0tre." + ".".join(path.relative_to(SRC).with_suffix("").parts[:-1])
    package = package.rstrip(".")
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("name", ["report.py", "outdir.py"])
def test_library_modules_do_not_import_the_cli(name: str) -> None:
    imported = _imports(SRC / name)
    assert not any(m == "l0tre.cli" or m.startswith("l0tre.cli.") for m in imported), imported


@pytest.mark.parametrize("path", sorted(CLI_DIR.glob("*.py")), ids=lambda p: p.name)
def test_cli_uses_the_engine_public_surface(path: Path) -> None:
    """Only ``l0tre.engine``'s exports, never its internal modules."""
    import l0tre.engine

    imported = _imports(path)
    assert not any(m.startswith("l0tre.engine.") and m.rsplit(".", 1)[1] not in l0tre.engine.__all__
                   for m in imported), imported


def test_value_parsers_are_reexported() -> None:
    for name in ("parse_count", "parse_duration", "parse_indices", "parse_size", "UsageError"):
        assert getattr(l0tre.cli, name) is getattr(parsing, name)
    assert inspect.signature(l0tre.cli.main).parameters.keys() == {"argv"}
