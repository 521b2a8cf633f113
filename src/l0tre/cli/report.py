"""``l0tre report DIR``: (re)build the figures and index.html of an output folder."""

from __future__ import annotations

import argparse

from ..report import build_report
from .common import output_errors
from .parsing import EXIT_OK, Subparsers, common_options

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Subparsers) -> None:
    """Register ``report`` and its argument."""
    rep = subparsers.add_parser("report", parents=[common_options()], help="(re)build the report of an output folder")
    rep.add_argument("dir", metavar="DIR", help="an `l0tre evaluate` output folder")


def run(args: argparse.Namespace) -> int:
    """Rebuild the report of ``DIR``; print the files written, one a line (a folder that cannot be
    written is one error line naming ``DIR``)."""
    with output_errors("DIR"):
        written = build_report(args.dir)
    for path in written:
        print(path)
    return EXIT_OK
