"""A tqdm progress bar for evaluations (off unless asked for)."""

from __future__ import annotations

import time
from typing import Any

from .engine.hooks import ProgressHook
from .result import Result

__all__ = ["TqdmProgress"]


class TqdmProgress(ProgressHook):
    """Shows level t, inputs converged, global [lower, upper], estimate ± radius, evals/s, ETA."""

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

    def advance(self, evaluations: int) -> None:
        if self._bar is not None:
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
