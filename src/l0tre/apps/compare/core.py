"""Case study 4 of the paper: which architecture is more robust, :func:`compare`.

Every model is evaluated on the same inputs, level by level across the models (all models at
t = 1, then all at t = 2, …), so that a comparison at the lower levels exists whenever the run
stops (anytime). Each model's run has its own checkpoint and level log in ``checkpoint_dir``:
on a second call, a level a model completed is not redone and a level in progress resumes.
Levels t ≥ 2 may run on the first ``deep_limit`` inputs only (the paper's cost grows as
``C(n, t)``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ...api import prepare
from ...classifier import Classifier, ModelLike, as_classifier
from ...engine import Executor
from ...engine.loop import drive
from ...engine.options import DEFAULT_MAX_EVALUATIONS, check_inputs, check_labels
from ...validate import optional_int, positive_int, positive_seconds
from ..study.core import levels_path
from ..study.levels import LevelLog, LevelRecord
from .result import CompareResult

__all__ = ["compare", "run_folder"]

StageHook = Callable[[str, int, int], None]


def run_folder(index: int, name: str) -> str:
    """The folder name of model ``index`` (``00-dnn-1``): safe characters only."""
    return f"{index:02d}-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model")


def _named(models: Mapping[str, ModelLike] | Sequence[ModelLike]) -> list[tuple[str, ModelLike]]:
    """``(name, model)`` pairs; a sequence is named ``model-0``, ``model-1``, …"""
    if isinstance(models, Mapping):
        pairs = [(str(k), v) for k, v in models.items()]
    elif isinstance(models, Sequence) and not isinstance(models, (str, bytes)):
        pairs = [(getattr(m, "name", None) or f"model-{i}", m) for i, m in enumerate(models)]
        if len({n for n, _ in pairs}) < len(pairs):
            pairs = [(f"model-{i}", m) for i, (_, m) in enumerate(pairs)]
    else:
        raise TypeError("models: expected a mapping name -> model or a sequence of models, got "
                        f"{type(models).__name__}")
    if len(pairs) < 2:
        raise ValueError(f"models: expected at least 2 models to compare, got {len(pairs)}")
    return pairs


def check_same_shape(classifiers: list[tuple[str, Classifier]], shape: tuple[int, ...]) -> None:
    """Every model that declares its input shape must declare ``shape`` (the inputs' ``(C, H, W)``).

    Raises:
        ValueError: naming each model's input shape.
    """
    declared = {n: tuple(c.input_shape) for n, c in classifiers if c.input_shape is not None}
    if any(s != shape for s in declared.values()):
        listed = ", ".join(f"{n}: {_dims(s)}" for n, s in declared.items())
        raise ValueError(f"models: expected every model to take the inputs' shape {_dims(shape)}, got {listed}")


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _check_forward(classifiers: list[tuple[str, Classifier]], x: torch.Tensor) -> None:
    """Models without a declared input shape must run on the inputs."""
    for name, clf in classifiers:
        if clf.input_shape is None:
            try:
                clf(x[:1].to(clf.device))
            except RuntimeError as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ValueError(f"models: {name} does not run on inputs of shape {_dims(tuple(x.shape[1:]))} "
                                 f"({first})") from exc


def compare(
    models: Mapping[str, ModelLike] | Sequence[ModelLike],
    x: torch.Tensor | np.ndarray,
    *,
    labels: torch.Tensor | np.ndarray | None = None,
    epsilon: float = 0.5,
    t_max: int = 2,
    deep_limit: int | None = None,
    features: str = "pixel",
    certify: bool = False,
    certify_time_limit: float = 60.0,
    batch_size: int | None = None,
    max_memory: int | None = None,
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    time_budget: float | None = None,
    device: str | torch.device | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    mode: str = "auto",
    confidence: float = 0.95,
    show_progress: bool = False,
    on_stage: StageHook | None = None,
    executor: Executor | None = None,
) -> CompareResult:
    """Compare the L0 robustness of several models on the same inputs (paper case study 4).

    Args:
        models: a mapping ``name → model`` (or a sequence, named ``model-0``, …); each as
            accepted by :func:`l0tre.evaluate`. All must take ``x``'s shape.
        x: ``(N, C, H, W)`` inputs in the models' bounds; labels: ``(N,)`` true labels (accuracy).
        epsilon, features, batch_size, max_memory, max_evaluations, device, mode, certify,
            certify_time_limit: as :func:`l0tre.evaluate`, for every model.
        t_max: the last level.
        deep_limit: levels t ≥ 2 on the first ``deep_limit`` inputs only (default ``None``: all).
        time_budget: seconds for this call over all models (default ``None``); when spent, the
            comparison of the levels completed by every model is returned (``stopped``).
        checkpoint_dir: a folder for the models' checkpoints and level logs (default ``None``:
            none); what is there is resumed (levels done are not redone).
        confidence: level of the paired confidence intervals (default 0.95).
        show_progress: a tqdm progress bar per model and level.
        on_stage: called with ``(name, t, inputs)`` before a model's level runs.
        executor: where the work units run (default ``None``: here), e.g. a
            :class:`~l0tre.cluster.RayExecutor`; results do not depend on it.

    Returns:
        a :class:`~.result.CompareResult` (``table()``, ``ranking(t)``, ``to_dict()``).

    Raises:
        TypeError, ValueError: bad arguments (named), models of different input shapes.
    """
    pairs = _named(models)
    t_max = positive_int("t_max", t_max)
    deep_limit = optional_int("deep_limit", deep_limit)
    time_budget = positive_seconds("time_budget", time_budget)
    if not (isinstance(confidence, float) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence: expected a float in (0, 1), got {confidence!r}")
    clfs = [(name, as_classifier(m, device=device)) for name, m in pairs]
    if isinstance(x, (torch.Tensor, np.ndarray)) and x.ndim == 4:
        check_same_shape(clfs, tuple(int(d) for d in x.shape[1:]))
    x = check_inputs(x, clfs[0][1])
    lab = check_labels(labels, x.shape[0])
    _check_forward(clfs, x)
    n = int(x.shape[0])
    deep = n if deep_limit is None else min(deep_limit, n)
    folder = None if checkpoint_dir is None else Path(checkpoint_dir)
    runner = _Runner(x, lab, folder, deep, show_progress, on_stage, time_budget, dict(
        epsilon=epsilon, features=features, certify=certify, certify_time_limit=certify_time_limit,
        batch_size=batch_size, max_memory=max_memory, max_evaluations=max_evaluations, mode=mode,
        executor=executor))
    stopped = "done"
    for t in range(1, t_max + 1):
        for k, (name, clf) in enumerate(clfs):
            stopped = runner.stage(k, name, clf, t)
            if stopped != "done":
                break
        if stopped != "done":
            break
    accuracy = [None if lab is None else float((clf.predict(x) == lab.to(clf.device)).double().mean().cpu())
                for _, clf in clfs]
    return CompareResult(names=[n for n, _ in clfs], accuracy=accuracy, levels=runner.records(clfs, t_max), inputs=n,
                         deep_inputs=deep, t_max=t_max, stopped=stopped, confidence=confidence)


class _Runner:
    """Runs one model's level (a stage), keeping level logs and the time budget."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor | None, folder: Path | None, deep: int,
                 show_progress: bool, on_stage: StageHook | None, budget: float | None,
                 options: dict[str, object]) -> None:
        self.x, self.labels, self.folder, self.deep = x, labels, folder, deep
        self.show_progress, self.on_stage, self.options = show_progress, on_stage, options
        self.deadline = None if budget is None else time.perf_counter() + budget
        self.logs: dict[tuple[str, str], LevelLog] = {}

    def _set(self, t: int) -> str:
        """Which run a level belongs to: ``wide`` (all inputs) or ``deep`` (the first ``deep``)."""
        return "wide" if t == 1 or self.deep == self.x.shape[0] else "deep"

    def _checkpoint(self, k: int, name: str, which: str) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / run_folder(k, name) / f"{which}.pt"

    def stage(self, k: int, name: str, clf: Classifier, t: int) -> str:
        """Run level ``t`` of model ``name`` (unless done); ``"done"`` or why it stopped."""
        which = self._set(t)
        log = self.logs.get((name, which))
        if log is not None and (log.record(t) is not None or _all_converged(log)):
            return "done"
        remaining = None if self.deadline is None else self.deadline - time.perf_counter()
        if remaining is not None and remaining <= 0:
            return "time_budget"
        size = int(self.x.shape[0]) if which == "wide" else self.deep
        ckpt = self._checkpoint(k, name, which)
        if ckpt is not None:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
        progress = None
        if self.show_progress:
            from ...progress import TqdmProgress

            progress = TqdmProgress()
        engine = prepare(clf, self.x[:size], labels=None if self.labels is None else self.labels[:size],
                         t_max=t, checkpoint=ckpt, progress=progress, **self.options)  # type: ignore[arg-type]
        if log is None:
            log = LevelLog(engine.problem.valid_counts, None if ckpt is None else levels_path(ckpt),
                           engine.fingerprint)
            self.logs[(name, which)] = log
            if log.record(t) is not None or _all_converged(log):
                return "done"
        if self.on_stage is not None:
            self.on_stage(name, t, size)
        if remaining is not None:
            engine.set_time_budget(remaining, from_now=True)
        try:
            final = drive(engine, log.observe)
        finally:
            engine.progress.close()
        return "done" if final.stopped in ("t_max", "converged") else final.stopped

    def records(self, clfs: list[tuple[str, Classifier]], t_max: int) -> dict[str, list[LevelRecord]]:
        """Per model: level 1 of the wide run, levels ≥ 2 of the deep one (or the wide run when
        they are the same); a level after one that left no input open is carried over (no work)."""
        out: dict[str, list[LevelRecord]] = {}
        for name, _ in clfs:
            recs: dict[int, LevelRecord] = {}
            for t in range(1, t_max + 1):
                log = self.logs.get((name, self._set(t)))
                rec = None if log is None else log.record(t)
                if rec is None and log is not None and log.records and log.records[-1].t < t and _all_converged(log):
                    last = log.records[-1]
                    rec = replace(last, t=t, active=torch.zeros_like(last.active), seconds=0.0, evaluations=0,
                                  input_seconds=torch.zeros_like(last.input_seconds))
                if rec is not None:
                    recs[t] = rec
            out[name] = [recs[t] for t in sorted(recs)]
        return out


def _all_converged(log: LevelLog) -> bool:
    """Whether the last recorded level left no input open (later levels have nothing to do)."""
    return bool(log.records) and bool((log.records[-1].lower == log.records[-1].upper).all())
