"""The ``l0tre`` command line: ``evaluate``, ``info``, ``models``, ``attack``, ``report``, ``demo``,
``study``, ``saliency``.

One module per command (``l0tre.cli.<command>``), each with ``add_parser(subparsers)`` and
``run(args) -> int``; argument types live in :mod:`l0tre.cli.parsing`, what the commands share
in :mod:`l0tre.cli.common`. This module only builds the parser and dispatches.

Errors in the user's input (missing or corrupt files, unknown names, shape mismatches,
values out of range, bad option values, an output folder that cannot be written) print one line
``l0tre: error: ...`` on stderr and exit with code 2 (``--debug`` adds the traceback). Ctrl-C /
SIGTERM during an evaluation stop it with its current bounds written, exit code 0.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import signal
import sys
import traceback
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

from ..host_memory import keep_freed_memory
from .parsing import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    CliParser,
    UsageError,
    parse_count,
    parse_duration,
    parse_indices,
    parse_size,
)

__all__ = [
    "UsageError",
    "build_parser",
    "main",
    "parse_count",
    "parse_duration",
    "parse_indices",
    "parse_size",
]


def _commands() -> dict[str, ModuleType]:
    """The command modules by name, in the order ``l0tre --help`` lists them."""
    from . import attack, coverage, demo, evaluate, info, models, report, train
    from . import compare as compare_cmd
    from . import saliency as saliency_cmd
    from . import study as study_cmd

    return {"evaluate": evaluate, "info": info, "models": models, "attack": attack, "report": report,
            "train": train, "demo": demo, "study": study_cmd, "compare": compare_cmd,
            "saliency": saliency_cmd, "coverage": coverage}


def build_parser() -> argparse.ArgumentParser:
    """The ``l0tre`` argument parser (every command registers its own subparser)."""
    from .. import __version__

    parser = CliParser(prog="l0tre", description="Anytime L0 robustness evaluation (L0-TRE) with trustworthy bounds.")
    parser.add_argument("--version", action="version", version=f"l0tre {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CliParser)
    for module in _commands().values():
        module.add_parser(sub)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command ``args.command``; returns its exit code."""
    code: int = _commands()[args.command].run(args)
    return code


def _no_command() -> int:
    """The error for a plain ``l0tre``: one line listing every command."""
    names = list(_commands())
    print(f"l0tre: error: expected a command: {', '.join(names[:-1])} or {names[-1]} (see `l0tre --help`)",
          file=sys.stderr)
    return EXIT_ERROR


@contextlib.contextmanager
def _after_error_quiet(debug: bool) -> Iterator[list[bool]]:
    """Inside, once the flag it yields is set (an error was reported), an ``OSError`` raised again
    while the failed run is cleaned up (a generator closed when collected, writing its final
    checkpoint to the same unwritable folder) is not printed as "Exception ignored in ...": the
    error line already said it. ``--debug`` prints them."""
    failed = [False]
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        """Drop a repeated file-system error of the cleanup; pass on anything else."""
        if failed[0] and not debug and isinstance(unraisable.exc_value, OSError):
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield failed
    finally:
        if failed[0]:
            gc.collect()  # clean up the failed run now, under the hook
        sys.unraisablehook = previous


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``l0tre`` command line; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    from .common import one_line, raise_interrupt

    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    try:
        args = build_parser().parse_args(args_list)
    except UsageError as exc:
        print(f"l0tre: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_ERROR
    if args.command is None:
        return _no_command()
    try:
        previous = signal.signal(signal.SIGTERM, raise_interrupt)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    with _after_error_quiet(debug) as failed:
        try:
            keep_freed_memory()
            return _dispatch(args)
        except KeyboardInterrupt:
            print("l0tre: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except (ValueError, TypeError, OSError, ImportError) as exc:
            failed[0] = True
            if debug:
                traceback.print_exc()
            print(f"l0tre: error: {one_line(exc)}", file=sys.stderr)
            return EXIT_ERROR
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
