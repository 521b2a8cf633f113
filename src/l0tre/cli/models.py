"""``l0tre models``: a table of the built-in models and whether their files are here."""

from __future__ import annotations

import argparse

from ..models import list_models
from .parsing import EXIT_OK, Subparsers, common_options

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Subparsers) -> None:
    """Register ``models`` and its options."""
    models = subparsers.add_parser("models", parents=[common_options()], help="list the built-in models")
    models.add_argument("--data-root", metavar="DIR", help="where the shared data lives (default: $L0TRE_DATA)")


def run(args: argparse.Namespace) -> int:
    """Print one row per built-in model: name, input shape, output, availability, description."""
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
