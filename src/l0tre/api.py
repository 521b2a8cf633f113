"""Public entry points: :func:`evaluate` and :func:`evaluate_iter`, and :func:`prepare`, the builder
they share (the CLI and the applications use it to drive the engine themselves).

The three take the same keyword-only options (explicit signatures, kept equal by
``tests/test_api_docs.py``); the options are documented once, in :func:`evaluate`'s docstring,
and :func:`evaluate_iter`'s ``Args`` section is filled in from it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import numpy as np
import torch

from .classifier import ModelLike, as_classifier
from .engine.certified import CertifyMode, CertifyOptions
from .engine.executor import Executor
from .engine.features import FeatureKind, FeatureSpace, select_space, selection_label
from .engine.hooks import ProgressHook
from .engine.loop import Engine, drive
from .engine.options import DEFAULT_MAX_EVALUATIONS, EvaluateOptions, check_inputs, check_labels
from .engine.planning import estimate_guard, level_evaluations
from .engine.problem import Problem
from .engine.state import RunState
from .execution.memory import default_max_memory, memory_rows
from .execution.modes import Mode, tune
from .execution.plan import ExecutionPlan
from .execution.precision import Rechecked, screening_objective
from .host_memory import keep_freed_memory
from .objectives import Objective
from .result import Result

__all__ = ["evaluate", "evaluate_iter", "prepare"]

_F = TypeVar("_F", bound=Callable[..., Any])


def prepare(
    model: ModelLike,
    x: torch.Tensor | np.ndarray,
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
    labels: torch.Tensor | np.ndarray | None = None,
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
    precision: str = "auto",
) -> Engine:
    """Validate everything and build the :class:`~l0tre.engine.Engine` (no work yet); a
    ``checkpoint`` file that exists is resumed (it must be of the same model, inputs and
    options). Arguments, and errors, as :func:`evaluate` (no ``show_progress``: pass a
    ``progress`` hook). Run it with :func:`~l0tre.engine.drive` or iterate ``engine.run()``."""
    keep_freed_memory()
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
        return tune(clf, shape, cap, opts.batch_size, mode, work_rows=work_rows)[1]

    provisional = min(opts.batch_size, cap) if opts.batch_size is not None else min(cap, 256)
    space = select_space(FeatureSpace(opts.features, shape), pixels, clf, x, provisional)
    if space.positions is not None and cert.mode is not CertifyMode.OFF:
        raise ValueError("certify: certification needs the whole feature space; got a pixel selection (pixels=...)")
    objective = screening_objective(clf, objective, precision)
    problem = Problem.build(clf, objective, space, x, opts.steps, opts.top_k, provisional)
    work_rows = level_evaluations(problem, 1) if opts.t_max == 1 else None  # bounds the tuning's cost
    if keep_sensitivity and problem.top_k < space.n:
        raise ValueError(f"top_k: keep_sensitivity needs top_k >= n = {space.n}, got {problem.top_k}")
    plan = ExecutionPlan(clf, shape, pixel_features=opts.features is FeatureKind.PIXEL, batch_size=provisional,
                         user_batch=opts.batch_size, max_memory=opts.max_memory,
                         incremental=mode != "eager" if incremental is None else incremental,
                         force_incremental=bool(incremental), tuner=tuner, work_rows=work_rows)
    state = RunState.fresh(problem, lab, opts.epsilon, certified=cert.mode is not CertifyMode.OFF,
                           keep_sensitivity=bool(keep_sensitivity), pixels=selection_label(pixels, space),
                           precision="bfloat16" if isinstance(objective, Rechecked) else "float32")
    engine = Engine(problem, opts, plan, state, checkpoint=checkpoint, progress=progress, certify=cert,
                    executor=executor)
    if cert.mode is not CertifyMode.ONLY:
        estimate_guard(problem, opts.t_max, opts.max_evaluations)
    engine.resume()
    return engine


def evaluate(
    model: ModelLike,
    x: torch.Tensor | np.ndarray,
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
    labels: torch.Tensor | np.ndarray | None = None,
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
    precision: str = "auto",
    show_progress: bool = False,
) -> Result:
    """Bounds on the maximum safe L0 radius of ``model`` around each input of ``x``.

    Levels ``t = 1, 2, …, t_max`` are evaluated in turn: level ``t`` checks every way of
    changing ``t`` features to values of the ε-grid (a clean level proves ``lower ≥ t``) and
    searches adversarial examples from the most sensitive subsets (``upper``). Inputs whose
    bounds meet are not worked on again. For snapshots while it runs use :func:`evaluate_iter`.

    Args:
        model: an :class:`l0tre.Classifier`, a ``torch.nn.Module`` (logits, inputs in
            ``bounds``) or a callable ``(N, C, H, W) → (N, classes)``.
        x: ``(N, C, H, W)`` float inputs inside the model's bounds: a ``torch.Tensor`` or a
            NumPy array (converted; the results are tensors).
        epsilon: grid step as a fraction of the input range; must divide 1 (default ``0.5``:
            the values ``{lo, mid, hi}``).
        t_max: last level (subset size) to evaluate (default ``2``).
        bounds: input range ``(lo, hi)`` (default ``None``: the classifier's, else ``(0, 1)``).
        features: what one unit of L0 is: ``"pixel"`` (default: a spatial position, all its
            channels) or ``"element"`` (one tensor element).
        batch_size: rows per model call (default ``None``: measured for the model; always
            capped by ``max_memory``). Results do not depend on it.
        max_memory: bytes one model call may use (default ``None``: 1 GiB on a CPU, a quarter
            of the GPU's memory, at most 32 GiB, on CUDA).
        time_budget: seconds (default ``None``: no limit); the run stops at the first unit of
            work after it with ``stopped == "time_budget"`` and valid bounds (a level whose work
            is all done by then still completes; no new level starts; a run does one unit at
            least). With a resumed ``checkpoint`` it counts the seconds already spent.
        device: where the model runs: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``,
            ``"cuda:1"``… (default ``None``: the model's own device; the CPU for a callable).
        checkpoint: a file path (default ``None``: no checkpoint). The state is written there
            atomically at every snapshot; when the file exists, the run resumes from it: it must
            have been written for the same model, inputs and options (else ``ValueError``;
            delete it or choose another path to start over).
        report_every: seconds between snapshots (and checkpoint writes) inside a level
            (default ``5.0``).
        labels: ``(N,)`` true labels, a tensor or NumPy array of integers (default ``None``);
            accuracy is reported, the reference label stays the model's prediction.
        max_evaluations: refuse (``ValueError``) a run with a level that needs more model
            evaluations (default ``10**10``).
        top_k: subsets kept per input and level for the upper-bound search (default ``None``:
            ``max(n, 1024)``, ``n`` the number of features).
        objective: what is searched for, an :class:`l0tre.Objective` (default ``None``:
            :class:`l0tre.Misclassification`, a label change).
        progress: an :class:`l0tre.engine.ProgressHook` that receives the progress events
            (default ``None``); closed at the end of the run.
        mode: forward execution mode (results do not depend on it): ``"auto"`` (default: times
            eager against channels_last and keeps the faster), ``"eager"`` (the plain path: turns
            every optimisation off), ``"channels_last"``, ``"compile"``,
            ``"compile+channels_last"``.
        incremental: evaluate level 1 (and 2) by recomputing only the windows of feature maps
            that changed pixels reach: ``None`` (default: where it measures faster), ``True``
            (always, where the model allows it), ``False`` (never).
        certify: ``False`` (default); ``True`` or ``"on"``: also prove lower bounds for *all
            real values* of the changed features (``certified_lower``; ``lower_kind ==
            "certified"`` where it equals the grid bound); ``"only"``: certification only (no
            grid pass, no upper-bound search).
        certify_time_limit: seconds per input and level for certification (default ``60.0``;
            then the level stays unproven for that input).
        certify_method: bounds used by certification: ``"auto"`` (default: ``"crown"`` when
            the model's only dense layers follow its last non-linearity, else ``"hybrid"``),
            ``"hybrid"``, ``"crown"``, ``"forward"`` or ``"ibp"``.
        pixels: the features that may change (default ``None``: all): ``"all"``,
            ``"sample:K"`` (``K`` features drawn with seed 0; ``"sample:K:SEED"``), ``"top:K"``
            (the ``K`` features a gradient screen of the margin ranks first, one selection for
            all inputs), feature indices (a sequence or 1-D integer tensor) or a boolean mask
            ``(H, W)`` (pixel features) or ``(C, H, W)`` (element features). With a selection,
            ``upper`` (an adversarial example) holds for the image, but ``lower`` only within
            the selected features: it proves nothing about the image (``Result.pixels`` names
            the selection, ``Result.lower_bound_claimed`` is ``False``, ``lower_kind`` is
            ``"selection"``).
        keep_sensitivity: keep the level-1 sensitivity map in ``Result.sensitivity``
            (default ``False``; needs ``top_k >= n``).
        executor: runs the work units (default ``None``: in this process, in order); see
            :class:`l0tre.engine.Executor`.
        precision: ``"auto"`` (default: bfloat16 screening on CUDA GPUs with bfloat16 units and
            the default objective, else float32), ``"float32"`` or ``"bfloat16"``: rows are
            evaluated by a bfloat16 copy of the model, and every row within the calibrated
            tolerance of the decision boundary (and one row in 64 of each call, before the
            others) is recomputed in float32; every adversarial example is re-checked in float32
            before a bound moves. ``Result.precision`` says which was used.
        show_progress: a tqdm progress bar on stderr (default ``False``); not together with
            ``progress``.

    Returns:
        the last snapshot, a :class:`l0tre.Result`: ``lower``, ``upper`` ``(N,)`` per input,
        ``global_lower`` / ``global_upper`` (their means), ``estimate`` ± ``radius``, and
        ``stopped``: ``"t_max"``, ``"converged"``, ``"time_budget"`` or ``"interrupted"``.
        ``KeyboardInterrupt`` (Ctrl-C) stops the run and returns the bounds so far.

    Raises:
        TypeError: an argument of the wrong type (the message names it), e.g. an integer ``x``.
        ValueError: an invalid value (named), e.g. ``x`` outside ``bounds`` or of another shape
            than the model's, an ``epsilon`` that does not divide 1, an unknown ``mode``, a level
            above ``max_evaluations``, or a ``checkpoint`` that is unreadable or was written for
            another model, inputs or options.
        OSError: the ``checkpoint`` cannot be written (the message names it and the path).

    Example:
        >>> import torch, l0tre
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x = torch.rand(2, 1, 4, 4)
        >>> res = l0tre.evaluate(model, x, t_max=2, time_budget=60)
        >>> res.lower.shape, res.stopped in ("t_max", "converged")
        (torch.Size([2]), True)
        >>> bool((res.lower <= res.upper).all())
        True
    """
    engine = _start(**locals())  # locals() here: exactly the arguments, by name
    try:
        return drive(engine)
    finally:
        engine.progress.close()


def _args_from(source: Callable[..., Any]) -> Callable[[_F], _F]:
    """Fill in the ``Args:`` line of the decorated function's docstring with the ``Args``
    section of ``source``'s (one text for the options of both functions)."""
    args = re.search(r"\n    Args:\n.*?\n\n", source.__doc__ or "", re.S)

    def fill(f: _F) -> _F:
        doc = f.__doc__ or ""
        line = re.search(r"\n    Args: .*?\n", doc)
        if args is not None and line is not None:  # (docstrings are absent under python -OO)
            f.__doc__ = doc[: line.start()] + args.group(0).rstrip("\n") + "\n" + doc[line.end():]
        return f

    return fill


@_args_from(evaluate)
def evaluate_iter(
    model: ModelLike,
    x: torch.Tensor | np.ndarray,
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
    labels: torch.Tensor | np.ndarray | None = None,
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
    precision: str = "auto",
    show_progress: bool = False,
) -> Generator[Result, None, None]:
    """Anytime evaluation: yields :class:`~l0tre.Result` snapshots as the bounds improve.

    A snapshot is yielded at the start, after every level ``t`` and at least every
    ``report_every`` seconds inside a level; the last one says why the run stopped
    (``stopped``). Every argument is checked when this is called, before the first snapshot.
    Closing the generator (``break`` out of the loop) stops the run; with a ``checkpoint``
    the next call resumes it.

    Args: those of :func:`evaluate`, the same names and defaults.

    Returns:
        a generator of :class:`l0tre.Result` snapshots (copies: keep any of them). Its last
        snapshot has ``stopped`` ``"t_max"``, ``"converged"``, ``"time_budget"`` or
        ``"interrupted"`` (a ``KeyboardInterrupt`` inside the engine; one that lands in the
        loop's body is the caller's).

    Raises:
        TypeError, ValueError, OSError: as :func:`evaluate` (arguments when called; a
            checkpoint that cannot be written while iterating).

    Example:
        >>> import torch, l0tre
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x = torch.rand(2, 1, 4, 4)
        >>> for snap in l0tre.evaluate_iter(model, x, t_max=2, time_budget=60):
        ...     line = f"t={snap.t}: {snap.estimate:.2f} ± {snap.radius:.2f} ({snap.stopped})"
        >>> snap.stopped in ("t_max", "converged")
        True
    """
    engine = _start(**locals())  # locals() here: exactly the arguments, by name
    return _snapshots(engine)


def _start(show_progress: bool = False, **options: Any) -> Engine:
    """:func:`prepare` with the options of :func:`evaluate` / :func:`evaluate_iter`."""
    if show_progress:
        if options.get("progress") is not None:
            raise ValueError("show_progress: a progress bar is shown by a progress hook; pass show_progress=True "
                             "or progress=..., not both")
        from .progress import TqdmProgress

        options["progress"] = TqdmProgress()
    return prepare(**options)


def _snapshots(engine: Engine) -> Generator[Result, None, None]:
    """The engine's snapshots; the progress hook is closed when the run ends or is closed."""
    try:
        yield from engine.run()
    finally:
        engine.progress.close()
