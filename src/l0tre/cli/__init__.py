"""The ``l0tre`` command line: ``evaluate``, ``info``, ``models``, ``report``, ``demo``.

Errors in the user's input (missing or corrupt files, unknown names, shape mismatches,
values out of range, bad option values) print one line ``l0tre: error: ...`` on stderr and
exit with code 2 (``--debug`` adds the traceback). Ctrl-C / SIGTERM during an evaluation
stop it with its current bounds written, exit code 0.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, NoReturn

__all__ = [
    "UsageError",
    "build_parser",
    "main",
    "parse_count",
    "parse_duration",
    "parse_indices",
    "parse_size",
]

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

_DURATION_TOKEN = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(hours?|hr|h|minutes?|min|m|seconds?|sec|s)?")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b?)\s*$", re.I)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


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
        ValueError: anything else.
    """
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
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


def _arg(fn: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap a parser so argparse reports its own message (ArgumentTypeError)."""

    def wrapped(text: str) -> Any:
        """Parse ``text``; a ``ValueError`` becomes an ``ArgumentTypeError``."""
        try:
            return fn(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    wrapped.__name__ = fn.__name__
    return wrapped


# -- parser ---------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        """Raise :class:`UsageError` with argparse's message and a ``--help`` hint."""
        cmd = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        hint = f" (see `l0tre {cmd} --help`)" if cmd else " (see `l0tre --help`)"
        raise UsageError(message + hint)


def _common() -> _Parser:
    """Options every subcommand takes (``--debug``)."""
    p = _Parser(add_help=False)
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return p


def _add_source(p: argparse.ArgumentParser, *, data_required: bool) -> None:
    """Model and data selection options (``evaluate`` and ``info``)."""
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, metavar="SPEC",
                   help="built-in name (see `l0tre models`), TorchScript/.pt/.pth/.onnx/.h5 file")
    g.add_argument("--data", required=data_required, metavar="SPEC",
                   help="mnist:test, mnist:train, cifar10:test, an image folder, a .npy/.npz file")
    g.add_argument("--data-root", metavar="DIR", help="where the shared data lives (default: $L0TRE_DATA)")
    g.add_argument("--limit", type=int, metavar="N", help="evaluate at most N inputs")
    g.add_argument("--indices", type=_arg(parse_indices), metavar="LIST",
                   help="positions in the data set, e.g. 0,5,9 or 0-19")
    g.add_argument("--start", type=int, default=0, metavar="K", help="skip the first K images of the data set")
    g.add_argument("--only-correct", action="store_true",
                   help="keep only inputs the model classifies correctly (needs labels)")
    g.add_argument("--arch", metavar="NAME", help="architecture of a bare state_dict file")
    g.add_argument("--trust-pickle", action="store_true",
                   help="allow loading full pickled models (runs code from the file)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the model runs")


def _add_engine(p: argparse.ArgumentParser) -> None:
    """Evaluation options shared by ``evaluate`` and ``info``."""
    g = p.add_argument_group("evaluation")
    g.add_argument("--epsilon", type=float, default=0.5, metavar="E",
                   help="grid step as a fraction of the input range, dividing 1 (default 0.5)")
    g.add_argument("--t-max", type=int, default=2, metavar="T", help="last level (subset size) to evaluate")
    g.add_argument("--features", choices=("pixel", "element"), default="pixel",
                   help="a feature is a pixel (all channels) or a single tensor element")
    g.add_argument("--batch-size", type=int, metavar="N", help="rows per model call")
    g.add_argument("--max-memory", type=_arg(parse_size), metavar="SIZE",
                   help="memory cap for a batch, e.g. 512M, 2G (default 1G)")
    g.add_argument("--max-evaluations", type=_arg(parse_count), metavar="N",
                   help="refuse a level that needs more model evaluations (default 1e10)")


def build_parser() -> argparse.ArgumentParser:
    """The ``l0tre`` argument parser."""
    from .. import __version__

    common = _common()
    parser = _Parser(prog="l0tre", description="Anytime L0 robustness evaluation (L0-TRE) with trustworthy bounds.")
    parser.add_argument("--version", action="version", version=f"l0tre {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    ev = sub.add_parser("evaluate", parents=[common], help="bounds on the maximum safe L0 radius",
                        description="Evaluate a model on a data set; writes results.json, "
                                    "per_input.csv, adversarial.npz and a report to --out.")
    _add_source(ev, data_required=True)
    _add_engine(ev)
    g = ev.add_argument_group("run")
    g.add_argument("--time-budget", type=_arg(parse_duration), metavar="DURATION",
                   help="stop after this long (90, 90s, 10m, 1h) with the current bounds")
    g.add_argument("--out", default="l0tre-results", metavar="DIR", help="output folder (default ./l0tre-results)")
    g.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    g.add_argument("--report-every", type=float, default=5.0, metavar="SEC",
                   help="seconds between snapshots (and output writes) inside a level")
    g.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    g.add_argument("--quiet", action="store_true", help="no progress bar and no notices")
    g.add_argument("--json", action="store_true", help="print the final results.json to stdout")
    g.add_argument("--no-report", action="store_true", help="skip the PNG/HTML report")
    c = ev.add_argument_group("certification and speed")
    c.add_argument("--certify", action="store_true",
                   help="also prove lower bounds for all real values (lower_kind 'certified')")
    c.add_argument("--certify-only", action="store_true",
                   help="certified lower bounds only: no grid pass, no upper-bound search")
    c.add_argument("--certify-time-limit", type=float, default=60.0, metavar="SEC",
                   help="seconds per input and level for certification (default 60)")
    c.add_argument("--certify-method", choices=("auto", "hybrid", "crown", "forward", "ibp"), default="auto",
                   help="bounds for certification: 'hybrid' (CROWN on the fully connected head), 'crown' "
                        "(tighter, costlier on convolutional bodies; better for conv + linear models) or 'auto' "
                        "(default: crown when the only dense layers follow the last non-linearity, else hybrid)")
    c.add_argument("--mode", choices=("auto", "eager", "channels_last", "compile", "compile+channels_last"),
                   default="auto", help="forward execution mode; 'eager' turns every optimisation off")

    info = sub.add_parser("info", parents=[common], help="model summary, evaluations per level, time estimate",
                          description="Model summary and the number of model evaluations each level needs, "
                                      "with a time estimate from a short warm-up.")
    _add_source(info, data_required=False)
    _add_engine(info)
    info.add_argument("--quiet", action="store_true", help="no notices")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")

    models = sub.add_parser("models", parents=[common], help="list the built-in models")
    models.add_argument("--data-root", metavar="DIR", help="where the shared data lives (default: $L0TRE_DATA)")

    from .attack import add_parser as add_attack_parser

    add_attack_parser(sub)

    rep = sub.add_parser("report", parents=[common], help="(re)build the report of an output folder")
    rep.add_argument("dir", metavar="DIR", help="an `l0tre evaluate` output folder")

    demo = sub.add_parser("demo", parents=[common], help="evaluate the bundled MNIST model and write a report",
                          description="Evaluates 20 of the 100 bundled MNIST test images on the embedded "
                                      "paper-mnist model at t=1, then t=2 under a time budget.")
    demo.add_argument("--out", default="l0tre-demo", metavar="DIR", help="output folder (default ./l0tre-demo)")
    demo.add_argument("--time-budget", type=_arg(parse_duration), default=80.0, metavar="DURATION",
                      help="evaluation time budget (default 80s)")
    demo.add_argument("--limit", type=int, default=20, metavar="N", help="number of images (default 20)")
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


# -- commands -------------------------------------------------------------------------------------
def _cmd_models(args: argparse.Namespace) -> int:
    """``l0tre models``: a table of the built-in models and whether their files are here."""
    from ..models import list_models

    rows = []
    for info in list_models():
        where = info.locate(args.data_root)
        c, h, w = info.input_shape
        rows.append((info.name, f"{c}x{h}x{w}", info.output, "yes" if where is not None else "no (needs data root)",
                     info.description))
    head = ("name", "input", "output", "available", "description")
    widths = [max(len(r[i]) for r in [*rows, head]) for i in range(4)]
    print("  ".join(h.ljust(w) for h, w in zip(head[:4], widths, strict=True)) + "  " + head[4])
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    """``l0tre report DIR``: rebuild the figures and index.html; print the files."""
    from ..report import build_report

    files = build_report(args.dir)
    for f in files:
        print(f)
    return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    """Run the handler of ``args.command``; returns the exit code."""
    from . import evaluate as cli_run
    from .attack import run as cmd_attack

    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "attack": cmd_attack,
        "evaluate": cli_run.cmd_evaluate,
        "info": cli_run.cmd_info,
        "demo": cli_run.cmd_demo,
        "models": _cmd_models,
        "report": _cmd_report,
    }
    return handlers[args.command](args)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: behave like Ctrl-C (the engine turns it into a final snapshot)."""
    raise KeyboardInterrupt(f"signal {signum}")


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type name when empty)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``l0tre`` command line; returns the exit code (0 ok, 2 user error)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    try:
        args = build_parser().parse_args(args_list)
    except UsageError as exc:
        print(f"l0tre: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_ERROR
    if args.command is None:
        print("l0tre: error: expected a command: evaluate, info, models, report or demo "
              "(see `l0tre --help`)", file=sys.stderr)
        return EXIT_ERROR
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("l0tre: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, TypeError, OSError, ImportError) as exc:
        if debug:
            traceback.print_exc()
        print(f"l0tre: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
