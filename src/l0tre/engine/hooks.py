"""Progress events of a run (the CLI's progress bar implements them)."""

from __future__ import annotations

from ..result import Result

__all__ = ["ProgressHook"]


class ProgressHook:
    """Receives progress events; every method is optional (the defaults do nothing).

    Per level: :meth:`level_start` (then :meth:`resumed` for a resumed level), :meth:`advance`
    after every model call of the level's sensitivity pass and :meth:`extra` for the evaluations
    beyond it (upper-bound search, tightening, re-checks), whose number is not known in advance.
    ``done + advance + extra`` over a level is the evaluations the level costs
    (``Result.level_evaluations``).
    """

    def level_start(self, t: int, evaluations: int, inputs: int) -> None:
        """Level ``t`` starts (or resumes): ``evaluations`` model evaluations planned over
        ``inputs`` inputs (the sensitivity pass, plus the extra evaluations already spent when
        resumed)."""

    def resumed(self, done: int) -> None:
        """The level just started was resumed: ``done`` of its planned evaluations were done by
        an interrupted run (called right after :meth:`level_start`, only when ``done > 0``)."""

    def advance(self, evaluations: int) -> None:
        """``evaluations`` more model evaluations of the planned pass were done."""

    def extra(self, evaluations: int) -> None:
        """``evaluations`` model evaluations beyond the planned pass were done (by default
        counted as :meth:`advance`)."""
        self.advance(evaluations)

    def snapshot(self, result: Result) -> None:
        """A snapshot was taken (a copy: the receiver may keep it)."""

    def close(self) -> None:
        """The run is over."""
