"""``l0tre.saliency``'s docstring follows the public API's rules (tests/test_api_docs.py)."""

from __future__ import annotations

import doctest
import inspect
import re

import torch

import l0tre

from ..test_api_docs import _literal, documented_args, sections


def test_signature_args_and_sections_agree() -> None:
    params = inspect.signature(l0tre.saliency).parameters
    doc = inspect.getdoc(l0tre.saliency) or ""
    args = documented_args(doc)
    assert list(args) == list(params)
    for name, p in params.items():
        if name in ("model", "x"):
            continue
        assert p.kind is p.KEYWORD_ONLY and "default" in args[name], name
        m = re.search(r"default ``([^`]+)``", args[name])
        if m:
            assert _literal(m.group(1)) == p.default, name
    found = sections(doc)
    for section in ("Args", "Returns", "Raises", "Example"):
        assert found.get(section, "").strip(), section


def test_example_runs() -> None:
    torch.manual_seed(0)
    tests = doctest.DocTestFinder(recurse=False).find(l0tre.saliency, "saliency", globs={})
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for t in tests:
        runner.run(t)
    assert tests[0].examples and runner.summarize(verbose=False).failed == 0
