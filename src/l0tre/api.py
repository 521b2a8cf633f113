"""Public entry points: :func:`evaluate` and :func:`evaluate_iter`."""

from __future__ import annotations

import os
from collections.abc import Generator

import torch

from .classifier import ModelLike, as_classifier
from .engine.certified import CertifyMode, CertifyOptions
from .engine.executor import Executor
from .engine.features import FeatureKind, FeatureSpace
from .engine.hooks import ProgressHook
from .engine.loop import Engine, drive
from .engine.options import DEFAULT_MAX_EVALUATIONS, EvaluateOptions, check_inputs, check_labels
from .engine.planning import estimate_guard
from .engine.problem import Problem
from .engine.state import RunState
from .execution.memory import default_max_memory, memory_rows
from .execution.modes import Mode, tune
from .execution.plan import ExecutionPlan
from .objectives import Misclassification, Objective
from .result import Result

__all__ = ["evaluate", "evaluate_iter", "prepare"]

def prepare(
    model: ModelLike,
    x: torch.Tensor,
    *,
    epsilon: float = 0.5,
    t_max: int = 2,
    bounds: tuple[float, float] | None = None,
    features: str = "pixel",
    batch_size: int | None = None,
    max_memory: int | None = None,
    time_budget: float | None = None,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    report_every: float = 5.0,
    labels: torch.Tensor | None = None,
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    top_k: int | None = None,
    objective: Objective | None = None,
    progress: ProgressHook | None = None,
    mode: str = "auto",
    incremental: bool | None = None,
    certify: bool | str = False,
    certify_time_limit: float = 60.0,
    certify_method: str = "auto",
    pixels: object = None,
    keep_sensitivity: bool = False,
    executor: Executor | None = None,
) -> Engine:
    """Validate everything and build the :class:`~l0tre.engine.Engine` (no work yet); a
    ``checkpoint`` file that exists is resumed (it must be of the same model, inputs and
    options). Arguments as :func:`evaluate`."""
    clf = as_classifier(model, bounds=bounds, device=device)
    opts = EvaluateOptions.build(
        epsilon=epsilon, t_max=t_max, features=features, batch_size=batch_size,
        max_memory=default_max_memory(clf.device) if max_memory is None else max_memory,
        time_budget=time_budget, report_every=report_every, max_evaluations=max_evaluations, top_k=top_k,
    )
    cert = CertifyOptions.build(certify, certify_method, certify_time_limit)
    x = check_inputs(x, clf)
    lab = check_labels(labels, x.shape[0])
    clf(x[: min(2, x.shape[0])])  # validates the output shape on the caller's own inputs first
    shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    cap = memory_rows(clf, shape, opts.max_memory)
    Mode.parse(mode)  # an unknown mode is refused here, not when the run starts

    def tuner() -> int:  # measured when the run starts, after its first snapshot
        return tune(clf, shape, cap, opts.batch_size, mode)[1]

    provisional = min(opts.batch_size, cap) if opts.batch_size is not None else min(cap, 256)
    space = FeatureSpace(opts.features, shape).select(pixels)
    if space.positions is not None and cert.mode is not CertifyMode.OFF:
        raise ValueError("certify: certification needs the whole feature space; got a pixel selection (pixels=...)")
    problem = Problem.build(clf, objective or Misclassification(), space, x, opts.steps, opts.top_k, provisional)
    if keep_sensitivity and problem.top_k < space.n:
        raise ValueError(f"top_k: keep_sensitivity needs top_k >= n = {space.n}, got {problem.top_k}")
    plan = ExecutionPlan(clf, shape, pixel_features=opts.features is FeatureKind.PIXEL, batch_size=provisional,
                         user_batch=opts.batch_size, max_memory=opts.max_memory,
                         incremental=mode != "eager" if incremental is None else incremental,
                         force_incremental=bool(incremental), tuner=tuner)
    state = RunState.fresh(problem, lab, opts.epsilon, certified=cert.mode is not CertifyMode.OFF,
                           keep_sensitivity=bool(keep_sensitivity))
    engine = Engine(problem, opts, plan, state, checkpoint=checkpoint, progress=progress, certify=cert,
                    executor=executor)
    if cert.mode is not CertifyMode.ONLY:
        estimate_guard(problem, opts.t_max, opts.max_evaluations)
    engine.resume()
    return engine


def evaluate_iter(model: ModelLike, x: torch.Tensor, **kwargs: object) -> Generator[Result, None, None]:
    """Anytime evaluation: yields :class:`~l0tre.Result` snapshots.

    A snapshot is yielded at the start, after every level ``t`` and at least every
    ``report_every`` seconds inside a level; the last one says why the run stopped
    (``t_max``, ``converged``, ``time_budget``, ``interrupted``). Arguments as :func:`evaluate`.
    """
    engine = prepare(model, x, **kwargs)  # type: ignore[arg-type]
    return engine.run()


def evaluate(model: ModelLike, x: torch.Tensor, *, epsilon: float = 0.5, t_max: int = 2,
             show_progress: bool = False, **kwargs: object) -> Result:
    """Bounds on the maximum safe L0 radius of ``model`` around each input of ``x``.

    Args:
        model: an :class:`l0tre.Classifier`, a ``torch.nn.Module`` (logits, inputs in
            ``bounds``) or a callable ``(N, C, H, W) → (N, classes)``.
        x: ``(N, C, H, W)`` float inputs inside the model's bounds.
        epsilon: grid step as a fraction of the range; must divide 1 (0.5 → {lo, mid, hi}).
        t_max: last level (subset size) to evaluate.
        bounds: input range ``(lo, hi)`` (default: the classifier's, else ``(0, 1)``).
        features: ``"pixel"`` (a spatial position, all channels) or ``"element"``.
        batch_size: rows per model call (capped by ``max_memory``).
        max_memory: bytes one model call may use (default ``None``: 1 GiB on a CPU, a quarter
            of the GPU's memory, at most 32 GiB, on CUDA).
        time_budget: seconds; the run stops at the first unit boundary after it.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        checkpoint: a file path; written atomically and resumed from when it exists.
        report_every: seconds between snapshots inside a level.
        labels: ``(N,)`` true labels (accuracy is reported; the reference stays the prediction).
        max_evaluations: refuse (``ValueError``) a level that needs more model evaluations.
        top_k: subsets kept per input for the upper-bound search (default ``max(n, 1024)``).
        mode: forward execution mode: ``"auto"`` (times eager vs channels_last and keeps the
            faster; incremental t=1 evaluation of leading conv layers), ``"eager"`` (the plain
            path: the switch that turns every optimisation off),
        certify: ``True``/``"on"``: also prove lower bounds for *all real values* of the changed
            features (``res.certified_lower``; ``lower_kind == "certified"`` where it equals the
            grid bound); ``"only"``: certification only (no grid pass, no upper-bound search).
        certify_time_limit: seconds per input and level for certification (then "unknown").
        certify_method: bounds used by certification: ``"auto"`` (default: ``"crown"`` when
            the model's only dense layers follow its last non-linearity, else ``"hybrid"``),
            ``"hybrid"``, ``"crown"``, ``"forward"`` or ``"ibp"``.
        incremental: ``None`` (use the incremental t=1 path when it measures faster), ``True``
            (always, when the model allows it), ``False`` (never).
            ``"channels_last"``, ``"compile"``, ``"compile+channels_last"``.
        show_progress: a tqdm progress bar on stderr.

    Returns:
        the last consistent snapshot. ``KeyboardInterrupt`` stops the run and returns it.
    """
    progress: ProgressHook | None = kwargs.pop("progress", None)  # type: ignore[assignment]
    if show_progress and progress is None:
        from .progress import TqdmProgress

        progress = TqdmProgress()
    engine = prepare(model, x, epsilon=epsilon, t_max=t_max, progress=progress, **kwargs)  # type: ignore[arg-type]
    try:
        return drive(engine)
    finally:
        if progress is not None:
            progress.close()
