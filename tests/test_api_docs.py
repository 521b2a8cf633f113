"""The public API explains itself: explicit signatures that agree with their docstrings.

For :func:`l0tre.evaluate`, :func:`l0tre.evaluate_iter` and :func:`l0tre.attack`: every
parameter of the signature is documented in the docstring's ``Args`` section and every
documented name is a parameter (both directions); every option is keyword-only and its entry
states its default (where it names a literal, the literal equals the signature's default); the
docstrings have ``Returns``, ``Raises`` and a runnable ``Example``. :func:`evaluate` and
:func:`evaluate_iter` take the same options, and :func:`l0tre.api.prepare` (the builder they
share) the same but ``show_progress``.
"""

from __future__ import annotations

import ast
import doctest
import inspect
import pydoc
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch

import l0tre
import l0tre.api
import l0tre.engine

PUBLIC: dict[str, Callable[..., Any]] = {
    "evaluate": l0tre.evaluate,
    "evaluate_iter": l0tre.evaluate_iter,
    "attack": l0tre.attack,
}
SECTION = re.compile(r"^(Args|Returns|Yields|Raises|Examples?|Notes?|Attributes):", re.M)


def sections(doc: str) -> dict[str, str]:
    """The Google-style sections of a dedented docstring (``Args``, ``Returns``…) by name,
    with their text."""
    heads = list(SECTION.finditer(doc))
    return {m.group(1): doc[m.end(): nxt.start() if nxt else len(doc)]
            for m, nxt in zip(heads, [*heads[1:], None], strict=True)}


def documented_args(doc: str) -> dict[str, str]:
    """``name -> description`` of the ``Args`` section (of a dedented docstring: entries
    indented by 4 spaces, their continuation lines by 8)."""
    text = sections(doc).get("Args", "")
    entries: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        m = re.match(r"^    (\w+): (.*)$", line)
        if m:
            name = m.group(1)
            assert name not in entries, f"{name} documented twice"
            entries[name] = m.group(2)
        elif name is not None and line.startswith("        "):
            entries[name] += " " + line.strip()
        elif line.strip():
            pytest.fail(f"unexpected line in Args: {line!r}")
    return entries


def _literal(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return eval(text, {"__builtins__": {}})  # e.g. 10**10, 1 << 30


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_signature_and_args_section_agree(name: str) -> None:
    func = PUBLIC[name]
    params = inspect.signature(func).parameters
    doc = inspect.getdoc(func) or ""
    args = documented_args(doc)
    assert list(args) == list(params), f"{name}: documented {sorted(set(args) ^ set(params))} differ"
    for pname, p in params.items():
        if pname in ("model", "x"):
            assert p.kind is p.POSITIONAL_OR_KEYWORD
            continue
        assert p.kind is p.KEYWORD_ONLY, f"{name}({pname}) should be keyword-only"
        assert p.default is not p.empty
        entry = args[pname]
        assert "default" in entry, f"{name}({pname}): the entry does not state its default"
        m = re.search(r"default ``([^`]+)``", entry)
        if m:
            assert _literal(m.group(1)) == p.default, f"{name}({pname}): documented default {m.group(1)}"
    assert "(N, C, H, W)" in args["x"], "the shape of x"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_sections_and_example(name: str) -> None:
    doc = inspect.getdoc(PUBLIC[name]) or ""
    found = sections(doc)
    for section in ("Args", "Returns", "Raises", "Example"):
        assert found.get(section, "").strip(), f"{name}: no {section} section"
    assert re.search(r"TypeError.*ValueError|ValueError", found["Raises"], re.S)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_examples_run(name: str) -> None:
    torch.manual_seed(0)
    tests = doctest.DocTestFinder(recurse=False).find(PUBLIC[name], name, globs={})
    assert tests and tests[0].examples, f"{name}: no runnable example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} example(s) failed"


def test_evaluate_and_evaluate_iter_take_the_same_options() -> None:
    a = inspect.signature(l0tre.evaluate).parameters
    b = inspect.signature(l0tre.evaluate_iter).parameters
    assert list(a.values()) == list(b.values())
    assert documented_args(inspect.getdoc(l0tre.evaluate) or "") == documented_args(
        inspect.getdoc(l0tre.evaluate_iter) or "")
    built = inspect.signature(l0tre.api.prepare).parameters
    assert [p for n, p in a.items() if n != "show_progress"] == list(built.values())


def test_help_shows_the_options() -> None:
    text = pydoc.render_doc(l0tre.evaluate, renderer=pydoc.plaintext)
    for word in ("time_budget", "checkpoint", "bounds", "max_memory", "objective", "progress", "Raises",
                 "Example", '"compile+channels_last"'):
        assert word in text
    text = pydoc.render_doc(l0tre.evaluate_iter, renderer=pydoc.plaintext)
    assert "time_budget" in text and "show_progress" in text and "Args:" in text


def test_show_progress_draws_a_bar_and_closes_it(capsys: pytest.CaptureFixture[str]) -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 3))
    x = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    snaps = list(l0tre.evaluate_iter(model, x, t_max=2, show_progress=True))
    assert snaps[-1].stopped in ("t_max", "converged")
    err = capsys.readouterr().err
    assert "t=1" in err and "eval" in err
    res = l0tre.evaluate(model, x, t_max=1, show_progress=True)
    assert res.t == 1 and "t=1" in capsys.readouterr().err


def test_closing_evaluate_iter_closes_the_progress_hook() -> None:
    closed: list[bool] = []

    class Hook(l0tre.engine.ProgressHook):
        def close(self) -> None:
            closed.append(True)

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 3))
    gen = l0tre.evaluate_iter(model, torch.rand(2, 1, 3, 3), t_max=2, progress=Hook())
    next(gen)
    assert not closed
    gen.close()
    assert closed == [True]


def test_results_have_a_short_repr() -> None:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 3))
    x = torch.rand(40, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    res = l0tre.evaluate(model, x, t_max=1)
    text = repr(res)
    assert text.startswith("Result(inputs=40, t=1, lower=") and "upper=" in text and "stopped='" in text
    assert len(text) < 200 and "tensor" not in text
    att = repr(l0tre.attack(model, x[:3], max_pixels=2))
    assert att.startswith("AttackResult(inputs=3") and len(att) < 200 and "tensor" not in att
