"""Saliency maps from the engine's level-1 pass (paper case study 5): :func:`saliency`.

The engine evaluates every grid colour of every pixel (incremental windows, chunking, devices,
optionally a bfloat16 screen with float32 re-checks); :class:`~.recorder.RecordingExecutor`
keeps the whole level-1 table. A pixel's sensitivity is the largest drop of the reference
class's margin (or confidence) over its colours; pixels whose lowest margin is ``<= 0`` are
re-checked colour by colour with the plain float32 model, which decides :attr:`flips`.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ...api import prepare
from ...classifier import Classifier, ModelLike, as_classifier
from ...engine.features import FeatureKind, FeatureSpace, SelectionKind, select_space
from ...engine.loop import Engine, drive
from ...engine.options import check_inputs, check_labels
from ...execution.precision import Precision, Rechecked, screening_objective
from ...objectives import Misclassification, Objective, ObjectiveValues
from .recorder import Level1Table, RecordingExecutor
from .result import SaliencyResult
from .settings import SaliencyOptions, ScoreKind

__all__ = ["saliency"]

#: single-pixel rows that seed the bfloat16 screen's tolerance before the run; every call then
#: re-checks one row in ``PROBE_EVERY`` spread over it before it trusts any
#: (:func:`~l0tre.execution.precision.screening_objective`)
_CALIBRATION_ROWS = 16


def saliency(
    model: ModelLike,
    x: torch.Tensor | np.ndarray,
    *,
    epsilon: float = 0.5,
    score: str = "margin",
    labels: torch.Tensor | np.ndarray | None = None,
    pixels: str = "all",
    baseline: float | None = None,
    batch_size: int | None = None,
    max_memory: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    mode: str = "auto",
    incremental: bool | None = None,
    upper_k: int = 1024,
    show_progress: bool = False,
) -> SaliencyResult:
    """Per-pixel sensitivity maps and single-pixel flips (every grid colour of every pixel).

    Args:
        model: an :class:`l0tre.Classifier`, a ``torch.nn.Module`` (logits, inputs in ``[0, 1]``)
            or a callable ``(N, C, H, W) → (N, classes)``.
        x: ``(N, C, H, W)`` inputs inside the model's bounds (tensor or NumPy array).
        epsilon: grid step as a fraction of the input range (default ``0.5``: ``{lo, mid, hi}``
            per channel, 26 new colours for an RGB pixel).
        score: ``"margin"`` (default: ``z_j − max_{k≠j} z_k``) or ``"confidence"`` (the softmax
            ``c_j``; saturates at 1 in float32 for confident inputs, so its maps are often blank).
        labels: ``(N,)`` true labels, reported only (default ``None``).
        pixels: ``"all"`` (default), ``"sample:K"`` or ``"top:K"`` (a gradient screen per image);
            with a selection the other pixels are ``NaN`` and no lower bound is claimed.
        baseline: search only the grid colour with every channel at ``baseline`` (default
            ``None``: every grid colour); as captum's ``FeatureAblation`` with that baseline.
            No lower bound is claimed then.
        batch_size: rows per model call (default ``None``: measured); results do not depend on it.
        max_memory: bytes one model call may use (default ``None``: the device's default).
        device: ``"cpu"``, ``"cuda"``, ``"auto"``… (default ``None``: the model's own device).
        precision: ``"auto"`` (default: bfloat16 screening on CUDA GPUs with bfloat16 units,
            else float32), ``"float32"`` or ``"bfloat16"``: rows are evaluated by a bfloat16 copy
            and every row within the calibrated tolerance of the decision boundary is recomputed
            in float32, so ``flips`` and ``lower`` stay claims about the float32 model (the map's
            other values are bfloat16 values).
        mode: forward execution mode, as :func:`l0tre.evaluate` (default ``"auto"``; results do
            not depend on it).
        incremental: recompute only the windows of feature maps a changed pixel reaches, as
            :func:`l0tre.evaluate` (default ``None``: where it measures faster).
        upper_k: most sensitive pixels the upper-bound search accumulates (default ``1024``).
        show_progress: a tqdm progress bar on stderr (default ``False``).

    Returns:
        a :class:`l0tre.SaliencyResult` (``sensitivity`` and ``flips`` ``(N, H, W)``,
        ``best_value`` ``(N, C, H, W)``, ``lower`` / ``upper`` ``(N,)``).

    Raises:
        TypeError, ValueError: invalid arguments, named (e.g. ``pixels='sample:0'``, an
            ``x`` of another shape than the model's, a ``baseline`` off the grid).

    Example:
        >>> import torch, l0tre
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> s = l0tre.saliency(model, torch.rand(2, 1, 4, 4))
        >>> s.sensitivity.shape, s.flips.dtype
        (torch.Size([2, 4, 4]), torch.bool)
    """
    start = time.perf_counter()
    opts = SaliencyOptions.build(epsilon=epsilon, score=score, pixels=pixels, baseline=baseline,
                                 batch_size=batch_size, max_memory=max_memory, precision=precision, upper_k=upper_k)
    clf = as_classifier(model, device=device)
    xt = check_inputs(x, clf)
    lab = check_labels(labels, xt.shape[0])
    _check_forward(clf, xt)
    per_image = opts.pixels.kind is SelectionKind.TOP and xt.shape[0] > 1
    groups = [slice(i, i + 1) for i in range(xt.shape[0])] if per_image else [slice(0, xt.shape[0])]
    parts = [_run(clf, xt[g], opts, mode, incremental, show_progress) for g in groups]
    out = _concat(parts) if len(parts) > 1 else parts[0]
    out.labels = lab
    out.seconds = time.perf_counter() - start
    return out


def _check_forward(clf: Classifier, x: torch.Tensor) -> None:
    """Run the model on the first input ``x[:1]`` ``(1, C, H, W)``: a shape mismatch (e.g. a
    greyscale model given RGB images) becomes a ``ValueError`` naming ``x``."""
    try:
        out = clf(x[:1].to(device=clf.device, dtype=clf.dtype))
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"x: the model cannot run on inputs of shape {tuple(x.shape[1:])} "
                         f"(a model/data shape mismatch?): {first}") from exc
    if out.dim() != 2 or out.shape[1] < 2:
        raise ValueError(f"model output: expected (N, classes) scores for at least 2 classes, got {tuple(out.shape)}")


def _objective(clf: Classifier, precision: Precision) -> Objective:
    """The objective of the level-1 pass: plain, or screened by a bfloat16 copy (``auto``: on
    CUDA GPUs with bfloat16 units only)."""
    return screening_objective(clf, None, precision)


def _calibrate(engine: Engine, objective: Rechecked) -> None:
    """Widen the screen's tolerance on the inputs and on single-pixel changes of them."""
    p = engine.problem
    objective.calibrate(p.model, p.x0, p.ref)
    gen = torch.Generator().manual_seed(0)
    cells = p.valid.nonzero().cpu()  # (M, 3): input, feature, colour
    if cells.shape[0] == 0:
        return
    pick = cells[torch.randperm(cells.shape[0], generator=gen)[:_CALIBRATION_ROWS]].to(p.x0.device)
    xs = p.x0[pick[:, 0]].clone()
    p.space.scatter(xs, pick[:, 1:2], p.palette[pick[:, 2]].unsqueeze(1))
    objective.calibrate(p.model, xs, p.ref[pick[:, 0]])


def _restrict_colours(engine: Engine, baseline: float) -> None:
    """Keep only the grid colour with every channel at ``baseline``."""
    p = engine.problem
    on_grid = (p.palette == baseline).all(dim=1)
    if not bool(on_grid.any()):
        grid = sorted({float(v) for v in p.palette.flatten().tolist()})
        raise ValueError(f"baseline: expected a grid value {grid}, got {baseline}")
    p.valid = p.valid & on_grid.view(1, 1, -1)
    p.valid_counts = p.valid.sum(2).cpu()


def _run(clf: Classifier, x: torch.Tensor, opts: SaliencyOptions, mode: str, incremental: bool | None,
         show_progress: bool) -> SaliencyResult:
    """One engine run (level 1) over the inputs ``x`` ``(N, C, H, W)``."""
    shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    space = select_space(FeatureSpace(FeatureKind.PIXEL, shape), opts.pixels, clf, x)
    objective = _objective(clf, opts.precision)
    recorder = RecordingExecutor(int(x.shape[0]), space.n)
    progress = None
    if show_progress:
        from ...progress import TqdmProgress

        progress = TqdmProgress()
    engine = prepare(clf, x, epsilon=opts.epsilon, t_max=1, batch_size=opts.batch_size, max_memory=opts.max_memory,
                     top_k=min(space.n, opts.upper_k), objective=objective, progress=progress, mode=mode,
                     incremental=incremental, pixels=space.positions, executor=recorder)
    try:
        if opts.baseline is not None:
            _restrict_colours(engine, opts.baseline)
        if isinstance(objective, Rechecked):
            _calibrate(engine, objective)
        res = drive(engine)
    finally:
        engine.progress.close()
    complete = opts.pixels.kind is SelectionKind.ALL and opts.baseline is None
    maps = _maps(engine, recorder.table(), opts.score)
    return SaliencyResult(
        sensitivity=maps[0], flips=maps[1], best_value=maps[2], evaluated=maps[3], base_score=maps[4],
        predicted=res.predicted.clone(), labels=None, lower=res.lower.clone() if complete else None,
        upper=res.upper.clone(), score=opts.score.value, epsilon=opts.epsilon, pixels=str(opts.pixels),
        precision="bfloat16" if isinstance(objective, Rechecked) else "float32",
        evaluations=res.evaluations, rechecked=objective.rechecked if isinstance(objective, Rechecked) else 0,
        notes=[] if complete else ["not every pixel and grid colour was searched: no lower bound is claimed"],
    )


def _maps(engine: Engine, table: Level1Table, score: ScoreKind) -> tuple[torch.Tensor, ...]:
    """``sensitivity``, ``flips``, ``best_value``, ``evaluated`` (full-image maps) and the base
    scores from the level-1 table."""
    p = engine.problem
    n_in, c, h, w = p.x_orig.shape
    base = _base_values(p.model, p.x0, p.ref, engine.plan.batch_size)
    has = table.point >= 0  # (N, n)
    if score is ScoreKind.MARGIN:
        base_score = base.score.double().cpu()
        drop = base_score.unsqueeze(1) - table.score
    else:
        base_score = base.confidence.double().exp().cpu()
        drop = base_score.unsqueeze(1) - table.confidence.exp()
    drop = torch.where(has, drop, torch.zeros_like(drop)).to(torch.float32)
    cols = p.space.full_index(torch.arange(p.n))
    sens = torch.full((n_in, h * w), float("nan"))
    sens[:, cols] = drop
    evaluated = torch.zeros(n_in, h * w, dtype=torch.bool)
    evaluated[:, cols] = True
    flips = torch.zeros(n_in, h * w, dtype=torch.bool)
    flips[:, cols] = _recheck_flips(engine, table.score <= 0)
    best = p.x_orig.clone().view(n_in, c, h * w)
    colour = p.palette.cpu()[table.point.clamp_min(0)].to(best.dtype)  # (N, n, C)
    cur = best[:, :, cols].transpose(1, 2)
    best[:, :, cols] = torch.where(has.unsqueeze(2), colour, cur).transpose(1, 2)
    return (sens.view(n_in, h, w), flips.view(n_in, h, w), best.view(n_in, c, h, w),
            evaluated.view(n_in, h, w), base_score.to(torch.float32))


def _base_values(model: Classifier, x0: torch.Tensor, ref: torch.Tensor, batch_size: int) -> ObjectiveValues:
    """The plain float32 objective values of the originals ``x0`` ``(N, C, H, W)``."""
    obj = Misclassification()
    parts = [obj.evaluate(model, x0[i : i + batch_size], ref[i : i + batch_size])
             for i in range(0, x0.shape[0], batch_size)]
    names = ("score", "confidence", "success", "label")
    return ObjectiveValues(**{k: torch.cat([getattr(v, k) for v in parts]) for k in names})


def _recheck_flips(engine: Engine, candidate: torch.Tensor) -> torch.Tensor:
    """``(N, n)`` bool: candidate pixels (lowest margin ``<= 0``) whose some valid colour flips
    the label in a plain float32 forward pass of the model."""
    p = engine.problem
    out = torch.zeros_like(candidate)
    cells = (candidate.to(p.valid.device).unsqueeze(2) & p.valid).nonzero()  # (M, 3) input, feature, colour
    rows = max(1, engine.plan.batch_size)
    obj = Misclassification()
    for b0 in range(0, cells.shape[0], rows):
        cb = cells[b0 : b0 + rows]
        xs = p.x0[cb[:, 0]].clone()
        p.space.scatter(xs, cb[:, 1:2], p.palette[cb[:, 2]].unsqueeze(1))
        ok = obj.evaluate(p.model, xs, p.ref[cb[:, 0]]).success.cpu()
        hit = cb[ok.to(cb.device)].cpu()
        out[hit[:, 0], hit[:, 1]] = True
    return out


def _concat(parts: list[SaliencyResult]) -> SaliencyResult:
    """Results of consecutive groups of inputs as one."""
    first = parts[0]

    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(r, name) for r in parts])

    return SaliencyResult(
        sensitivity=cat("sensitivity"), flips=cat("flips"), best_value=cat("best_value"), evaluated=cat("evaluated"),
        base_score=cat("base_score"), predicted=cat("predicted"), labels=None,
        lower=None if first.lower is None else cat("lower"), upper=cat("upper"), score=first.score,
        epsilon=first.epsilon, pixels=first.pixels, precision=first.precision,
        evaluations=sum(r.evaluations for r in parts), rechecked=sum(r.rechecked for r in parts), notes=first.notes,
    )
