"""Argument types and parser pieces of the ``l0tre`` command line.

The value parsers (:func:`parse_duration`, :func:`parse_indices`, :func:`parse_size`,
:func:`parse_count`) raise ``ValueError`` with a one-line message; :func:`argtype` wraps one
for argparse. :class:`CliParser` raises :class:`UsageError` instead of printing the usage and
exiting, so that :func:`l0tre.cli.main` reports every user error the same way.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn, TypeVar

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "CliParser",
    "Subparsers",
    "UsageError",
    "add_engine_options",
    "add_ray_options",
    "add_source_options",
    "argtype",
    "common_options",
    "parse_count",
    "parse_duration",
    "parse_indices",
    "parse_size",
]

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subparsers = argparse._SubParsersAction

_T = TypeVar("_T")

_DURATION_TOKEN = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(hours?|hr|h|minutes?|min|m|seconds?|sec|s)?")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b?)\s*$", re.I)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_RANGE = re.compile(r"(\d+)\s*-\s*(\d+)")


class UsageError(ValueError):
    """A bad command line (reported like any other user error: one line, exit code 2)."""


# -- option value parsers -----------------------------------------------------------------------
def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"10m"``, ``"1h"``, ``"1h30m"``, ``"2.5m"``.

    Raises:
        ValueError: not a positive duration.
    """
    s = str(text).strip().lower()
    pos, total, tokens, unitless = 0, 0.0, 0, False
    while pos < len(s):
        m = _DURATION_TOKEN.match(s, pos)
        if m is None:
            break
        unitless = unitless or m.group(2) is None
        total += float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "s")[0]]
        tokens += 1
        pos = m.end()
        while pos < len(s) and s[pos] == " ":
            pos += 1
    # a bare number only alone ("90"); "1h30" or "1.2.3" are ambiguous
    if tokens == 0 or pos != len(s) or (unitless and tokens > 1):
        raise ValueError(f"time budget: expected a duration like 90, 90s, 10m or 1h, got {text!r}")
    if total <= 0:
        raise ValueError(f"time budget: expected a positive duration, got {text!r}")
    return total


def parse_indices(text: str) -> list[int]:
    """``"0,5,9"`` or ``"0-4,10"`` (inclusive ranges) → a list of non-negative integers.

    Raises:
        ValueError: anything else (the message starts with ``indices:``).
    """
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        m = _RANGE.fullmatch(part)
        if m is not None:
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                raise ValueError(f"indices: expected a range a-b with a <= b, got {part!r}")
            out.extend(range(a, b + 1))
        elif part.isdigit():
            out.append(int(part))
        else:
            raise ValueError(f"indices: expected comma-separated integers like 0,5,9 (or ranges 0-9), got {text!r}")
    if not out:
        raise ValueError(f"indices: expected at least one integer, got {text!r}")
    return out


def parse_size(text: str) -> int:
    """Bytes from ``"1073741824"``, ``"512M"``, ``"2G"``, ``"1.5GiB"`` (binary units).

    Raises:
        ValueError: not a positive size.
    """
    m = _SIZE.match(str(text))
    if m is None:
        raise ValueError(f"max memory: expected a size like 512M, 2G or a number of bytes, got {text!r}")
    value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if value < 1:
        raise ValueError(f"max memory: expected a positive size, got {text!r}")
    return value


def parse_count(text: str) -> int:
    """A positive integer, also written ``1e9`` or ``10_000``.

    Raises:
        ValueError: not a positive whole number.
    """
    s = str(text).strip().replace("_", "")
    try:
        value = float(s) if re.fullmatch(r"\d+(\.\d*)?[eE]\+?\d+", s) else int(s)
    except ValueError:
        raise ValueError(f"expected a positive integer like 1000000 or 1e9, got {text!r}") from None
    if value != int(value) or value < 1:
        raise ValueError(f"expected a positive integer, got {text!r}")
    return int(value)


def argtype(fn: Callable[[str], _T]) -> Callable[[str], _T]:
    """Wrap a value parser for ``add_argument(type=...)``: its ``ValueError`` becomes an
    ``ArgumentTypeError``, so argparse reports the parser's own message."""

    def wrapped(text: str) -> _T:
        """Parse ``text``; a ``ValueError`` becomes an ``ArgumentTypeError``."""
        try:
            return fn(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    wrapped.__name__ = fn.__name__
    return wrapped


# -- parsers and shared option groups ----------------------------------------------------------
class CliParser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        """Raise :class:`UsageError` with argparse's message and a ``--help`` hint."""
        cmd = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        hint = f" (see `l0tre {cmd} --help`)" if cmd else " (see `l0tre --help`)"
        raise UsageError(message + hint)


def common_options() -> CliParser:
    """A parent parser with the options every subcommand takes (``--debug``)."""
    p = CliParser(add_help=False)
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return p


def add_source_options(p: argparse.ArgumentParser, *, data_required: bool) -> None:
    """Model and data selection options (``evaluate`` and ``info``)."""
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, metavar="SPEC",
                   help="built-in name (see `l0tre models`), TorchScript/.pt/.pth/.onnx/.h5 file")
    g.add_argument("--data", required=data_required, metavar="SPEC",
                   help="mnist:test, mnist:train, cifar10:test, an image folder, a .npy/.npz file")
    g.add_argument("--data-root", metavar="DIR", help="where the shared data lives (default: $L0TRE_DATA)")
    g.add_argument("--limit", type=int, metavar="N", help="evaluate at most N inputs")
    g.add_argument("--indices", type=argtype(parse_indices), metavar="LIST",
                   help="positions in the data set, e.g. 0,5,9 or 0-19")
    g.add_argument("--start", type=int, default=0, metavar="K", help="skip the first K images of the data set")
    g.add_argument("--only-correct", action="store_true",
                   help="keep only inputs the model classifies correctly (needs labels)")
    g.add_argument("--arch", metavar="NAME", help="architecture of a bare state_dict file")
    g.add_argument("--trust-pickle", action="store_true",
                   help="allow loading full pickled models (runs code from the file)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the model runs")


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """Evaluation options shared by ``evaluate`` and ``info``."""
    g = p.add_argument_group("evaluation")
    g.add_argument("--epsilon", type=float, default=0.5, metavar="E",
                   help="grid step as a fraction of the input range, dividing 1 (default 0.5)")
    g.add_argument("--t-max", type=int, default=2, metavar="T", help="last level (subset size) to evaluate")
    g.add_argument("--features", choices=("pixel", "element"), default="pixel",
                   help="a feature is a pixel (all channels) or a single tensor element")
    g.add_argument("--batch-size", type=int, metavar="N", help="rows per model call")
    g.add_argument("--max-memory", type=argtype(parse_size), metavar="SIZE",
                   help="memory cap for a batch, e.g. 512M, 2G (default 1G)")
    g.add_argument("--max-evaluations", type=argtype(parse_count), metavar="N",
                   help="refuse a level that needs more model evaluations (default 1e10)")


def add_ray_options(p: argparse.ArgumentParser) -> None:
    """``--ray ADDRESS``, ``--ray-workers K`` and ``--ray-gpus-per-worker G``: run the engine's
    work units on a Ray cluster (commands that run through the engine; see
    :func:`l0tre.cli.common.ray_executor`)."""
    g = p.add_argument_group("cluster (needs pip install 'l0tre[ray]')")
    g.add_argument("--ray", metavar="ADDRESS",
                   help="run the work units on Ray: 'auto' joins the running cluster (else starts a local one), "
                        "or a cluster address such as ray://head:10001 or head:6379")
    g.add_argument("--ray-workers", type=argtype(_positive), metavar="K",
                   help="Ray workers (default: one per CPU of the cluster, or per GPU with --ray-gpus-per-worker)")
    g.add_argument("--ray-gpus-per-worker", type=argtype(_non_negative_float), default=0.0, metavar="G",
                   help="GPUs per Ray worker (default 0: the workers run on CPUs; 0.5: two workers per GPU)")


def _positive(text: str) -> int:
    """A positive integer (``--ray-workers``)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"expected a positive integer, got {text!r}")
    return int(text)


def _non_negative_float(text: str) -> float:
    """A finite number >= 0 (``--ray-gpus-per-worker``)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"expected a finite number >= 0, got {text!r}")
    return value
