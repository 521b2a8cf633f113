"""A tqdm progress bar for evaluations (off unless asked for)."""

from __future__ import annotations

import time
from typing import Any

from .engine.hooks import ProgressHook
from .result import Result

__all__ = ["TqdmProgress"]


class TqdmProgress(ProgressHook):
    """Shows level t, inputs converged, global [lower, upper], estimate ± radius, evals/s, ETA.

    The total of a level is its sensitivity pass; the upper-bound search and tightening, whose
    cost is known only as it is spent, grow the total as they run. A resumed level starts at
    the work already done.
    """

    def __init__(self, **tqdm_kwargs: Any) -> None:
        self._kw = tqdm_kwargs
        self._bar: Any = None
        self._start = time.perf_counter()

    def level_start(self, t: int, evaluations: int, inputs: int) -> None:
        from tqdm.auto import tqdm

        if self._bar is not None:
            self._bar.close()
        self._bar = tqdm(total=evaluations, desc=f"t={t} ({inputs} open)", unit="eval",
                         unit_scale=True, dynamic_ncols=True, **self._kw)

    def resumed(self, done: int) -> None:
        """A resumed level: the bar starts at the work already done (not counted in the rate)."""
        if self._bar is not None:
            self._bar.n = self._bar.last_print_n = done
            self._bar.refresh()

    def advance(self, evaluations: int) -> None:
        if self._bar is not None:
            self._bar.update(evaluations)

    def extra(self, evaluations: int) -> None:
        """Work beyond the planned pass: the total grows with it, so the bar ends at 100 %."""
        if self._bar is not None:
            self._bar.total += evaluations
            self._bar.update(evaluations)

    def snapshot(self, result: Result) -> None:
        if self._bar is None:
            return
        self._bar.set_postfix_str(
            f"converged {int(result.converged.sum())}/{result.lower.numel()} "
            f"[{result.global_lower:.2f}, {result.global_upper:.2f}] "
            f"est {result.estimate:.2f}±{result.radius:.2f}",
            refresh=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
