"""Progress events of a run (the CLI's progress bar implements them)."""

from __future__ import annotations

from ..result import Result

__all__ = ["ProgressHook"]


class ProgressHook:
    """Receives progress events; every method is optional (the defaults do nothing)."""

    def level_start(self, t: int, evaluations: int, inputs: int) -> None:
        """Level ``t`` starts: ``evaluations`` model evaluations planned over ``inputs`` inputs."""

    def advance(self, evaluations: int) -> None:
        """``evaluations`` more model evaluations were done."""

    def snapshot(self, result: Result) -> None:
        """A snapshot was taken (a copy: the receiver may keep it)."""

    def close(self) -> None:
        """The run is over."""
