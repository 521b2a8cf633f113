"""``l0tre.attack``: a competitive minimal-L0 attack built on the engine's upper-bound path.

Pipeline per shard of inputs (all batched, see :mod:`.shards`):

1. **screen** (:mod:`.screening`) — single-feature sensitivities (the paper's level t = 1):
   every feature × every ε-grid colour (``screen="exact"``), or the ``candidates`` (feature,
   colour) pairs that a first-order estimate of the margin ranks best (``screen="gradient"``).
   A single-feature adversarial example ends the search for that input (L0 = 1 is minimal).
2. **candidates** (:mod:`.paths`) — the paper's cumulative path in two orderings (by
   confidence, as the engine, and by margin), an adaptive greedy forward selection (each step
   evaluates candidate additions exactly and keeps the lowest margin) and the sparsest iterate of
   a continuous relaxation (:mod:`.relax`); every candidate is tightened with the engine's
   greedy reverts and the smallest (then lowest-margin) one is kept.
3. **refine** (:mod:`.moves`) — rounds of: remove two changed pixels and add one (L0 − 1), swap
   one changed pixel for another and re-colour changed pixels on a finer grid when that lowers
   the margin, then tighten again.
4. **verify** (here) — every returned example is re-checked on the model in a separate forward
   pass; L0 is counted in positions ``(h, w)``.

The settings (screen, effort presets, validation) are in :mod:`.settings`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ...classifier import Classifier, ModelLike, as_classifier, ieee_float32
from ...engine.features import FeatureKind, FeatureSpace
from ...engine.grid import colours, grid_values
from ...engine.options import check_inputs, check_labels
from ...execution.graph_chain import build_chain
from ...execution.incremental import IncrementalPrefix
from ...execution.memory import DEFAULT_MAX_MEMORY, layer_output_bytes, plan_batch_size
from ...execution.modes import incremental_pays, tune
from ...execution.precision import LowPrecisionModel, Precision, Rechecked, choose_precision
from .result import AttackResult
from .searcher import CountingObjective, Deadline, SearchContext
from .settings import EFFORTS, SCREENS, AttackSettings, Effort, Screen, SearchConfig
from .shards import ProgressBar, ShardRunner

__all__ = ["EFFORTS", "SCREENS", "attack", "cpu_rows"]

_FINE_MAX_COLOURS = 64
_ANYTIME_ROUNDS = 32  # refinement rounds at most with a time budget (they stop at the deadline)
_CPU_CACHE_BYTES = 6 << 20
_CHAIN_ROWS = 512  # rows per call through the incremental chain (it splits them into cache-sized chunks)


def cpu_rows(model: Classifier, shape: tuple[int, ...], cache_bytes: int = _CPU_CACHE_BYTES) -> int:
    """Rows per model call on a CPU: the largest power of two (32 … 1024) for which the
    biggest layer output of a batch stays within ``cache_bytes``.

    Measured on the benchmark machine (channels_last, 1 and 2 threads): the paper's MNIST CNN
    and the CIFAR-10 ResNet-20 run fastest at 32–64 rows per call (64 KB – 86 KB per row in
    their largest layer) and 10–35 % slower at 256; whole attacks at 64 rows instead of 256:
    MNIST 13–17 % faster, CIFAR-10 ResNet-20 10–15 % faster (results identical).
    """
    sizes = layer_output_bytes(model, shape)
    if sizes is None:
        return 256  # no hooks on plain callables / TorchScript
    largest = max(sizes, default=0)
    rows = 1024
    while rows > 32 and rows * largest > cache_bytes:
        rows //= 2
    return rows


@ieee_float32()
def attack(
    model: ModelLike,
    x: torch.Tensor,
    *,
    max_pixels: int | None = None,
    epsilon: float = 0.5,
    time_budget: float | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    max_memory: int = DEFAULT_MAX_MEMORY,
    device: str | torch.device | None = None,
    features: str = "pixel",
    labels: torch.Tensor | None = None,
    show_progress: bool = False,
    screen: str | Screen = "auto",
    effort: str | Effort = "default",
    candidates: int | None = None,
    rounds: int | None = None,
    shard_size: int = 256,
    mode: str = "auto",
    precision: str = "auto",
) -> AttackResult:
    """Find adversarial examples with as few changed pixels as possible.

    Unlike :func:`l0tre.evaluate`, which bounds the robust radius from both sides, this only
    searches small adversarial examples (an upper bound per input), as fast as it can.

    Args:
        model: an :class:`l0tre.Classifier`, a ``torch.nn.Module`` (logits, inputs in
            ``[0, 1]``) or a callable ``(N, C, H, W) → (N, classes)``.
        x: ``(N, C, H, W)`` float inputs inside the model's bounds: a ``torch.Tensor`` or a
            NumPy array (converted; the results are tensors).
        max_pixels: L0 budget (default ``None``: unlimited); examples changing more positions
            are reported unsuccessful (``found_l0`` keeps their size).
        epsilon: value grid step as a fraction of the input range, dividing 1 (default
            ``0.5``): changed features take ε-grid colours (all channel combinations);
            re-colouring uses the grid of step ε/2 where it has at most 64 colours.
        time_budget: seconds **per attacked input** (default ``None``: no limit): a shard of
            ``k`` inputs adds ``k × time_budget`` seconds to the allowance (unused time passes on
            to the next shard); the search stops at the next move boundary once the allowance is
            used up and returns the best verified examples found so far (a shard that starts
            with none left is not searched). With a budget the refinement rounds continue past
            the preset's (up to 32) while they still change something, so that a larger budget
            buys a smaller L0.
        seed: recorded for reproducibility (default ``0``); the search itself is deterministic
            (ties are broken by feature and colour index), so results do not depend on it.
        batch_size: rows per model call (default ``None``: sized for the device and model;
            capped by ``max_memory``); results do not depend on it.
        max_memory: bytes one model call may use (default ``1 << 30``: 1 GiB).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``… (default ``None``: the model's device).
        features: ``"pixel"`` (default: a position, all channels) or ``"element"`` — what the
            search changes; ``l0`` always counts positions.
        labels: ``(N,)`` true labels, a tensor or NumPy array of integers (default ``None``);
            inputs the model misclassifies are flagged (``misclassified``) and not attacked.
        show_progress: a tqdm bar on stderr (default ``False``).
        screen: a :class:`~.settings.Screen` or its name (default ``"auto"``: exact when it
            costs at most the preset's ``exact_rows`` model rows per input or the model has no
            gradients, else gradient): ``"exact"`` (every feature × every grid colour, the
            paper's t = 1 pass; with it the result is never larger than the example of
            ``l0tre.evaluate(..., t_max=1)``, i.e. its upper bound + 1) or ``"gradient"`` (only
            the ``candidates`` pairs ranked best by the gradient of the margin; needs a
            ``torch.nn.Module``).
        effort: an :class:`~.settings.Effort` or its name, a preset of the search breadth (its
            :class:`~.settings.SearchPreset` is ``EFFORTS[effort]``; default ``"default"``):
            ``"fast"`` (gradient screen, no relaxation, no refinement rounds: ~20× cheaper
            than ``"default"`` on MNIST, ~20 % larger L0 there and much larger on adversarially
            trained models) or ``"thorough"`` (wider screening, more relaxation steps and
            refinement). ``candidates`` and ``rounds`` override it.
        candidates: (feature, colour) pairs screened exactly in gradient mode (default
            ``None``: the ``effort`` preset's).
        rounds: refinement rounds after the first tightening, 0 for none (default ``None``:
            the ``effort`` preset's).
        shard_size: inputs searched together (default ``256``; memory grows with it, results
            do not depend on it).
        mode: execution mode of the model, as in :func:`l0tre.evaluate` (default ``"auto"``:
            channels_last when it measures faster), ``"eager"``, ``"channels_last"``, ….
        precision: ``"auto"`` (default: a bfloat16 copy of the model screens candidates where
            the device has bfloat16 matrix units: CPUs with AMX, CUDA GPUs of compute
            capability ≥ 8.0), ``"float32"`` or ``"bfloat16"``. In bfloat16 every decision
            within a calibrated tolerance of the boundary is re-checked in full precision, the
            returned examples are verified in full precision, and an input whose example does
            not verify is searched again in full precision. The search path (hence the
            examples found) can differ between precisions. Independently of it, the exact screen,
            the tightening and one-pixel edits go through the engine's incremental chain in full
            precision where the model has one and it measures faster (``config["incremental"]``).

    Returns:
        an :class:`~l0tre.apps.attack.AttackResult`: ``x_adv`` ``(N, C, H, W)``, ``success``
        and ``l0`` ``(N,)`` (changed positions of each verified example), ``stopped``
        (``"done"`` or ``"time_budget"``).

    Raises:
        TypeError: an argument of the wrong type (the message names it), e.g. an integer
            ``x`` or a ``seed`` that is not an integer.
        ValueError: an invalid value (named), e.g. ``x`` outside the model's bounds or of
            another shape than the model's, an ``epsilon`` that does not divide 1, an unknown
            ``screen``, ``effort``, ``mode`` or ``precision``, ``screen="gradient"`` for a
            model that is not a ``torch.nn.Module``, or a CUDA ``device`` on a machine without.

    Example:
        >>> import torch, l0tre
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x = torch.rand(2, 1, 4, 4)
        >>> a = l0tre.attack(model, x, max_pixels=8, time_budget=60)
        >>> a.x_adv.shape, a.l0.shape
        (torch.Size([2, 1, 4, 4]), torch.Size([2]))
        >>> bool((a.l0[a.success] >= 1).all())
        True
    """
    start = time.perf_counter()
    opts = AttackSettings.check(
        epsilon=epsilon, max_pixels=max_pixels, time_budget=time_budget, seed=seed, screen=screen, effort=effort,
        candidates=candidates, rounds=rounds, shard_size=shard_size, batch_size=batch_size, max_memory=max_memory,
        features=features, precision=precision,
    )
    clf = as_classifier(model, device=device)
    x = check_inputs(x, clf)
    lab = check_labels(labels, x.shape[0])
    shape = _image_shape(x)
    rows = _rows_per_call(clf, shape, opts)
    tune(clf, shape, rows, rows, mode)  # execution mode only (rows are fixed here)
    plan = _Plan.build(clf, shape, opts)
    objective = CountingObjective()
    prec = choose_precision(clf, opts.precision)
    search_obj: CountingObjective | Rechecked = objective
    if prec is Precision.BF16:
        search_obj = Rechecked(objective, LowPrecisionModel(clf))
    chain = _chain(clf, x, plan, opts, rows)
    ctx = SearchContext(clf, plan.space, plan.palette, plan.fine, plan.config, Deadline(opts.time_budget),
                        batch_size=rows, grad_rows=max(1, rows // 2), differentiable=plan.differentiable,
                        chain=chain, chain_rows=rows if opts.batch_size is not None else max(rows, _CHAIN_ROWS))
    found = _search(ctx, x, lab, objective, search_obj, opts.shard_size, show_progress)
    config: dict[str, object] = {
        "screen": plan.config.screen.value, "effort": opts.effort.value, **opts.preset.as_dict(), "seed": opts.seed,
        "batch_size": rows, "fine_steps": plan.fine_steps, "device": str(clf.device), "mode": clf.mode,
        "precision": prec.value, "anytime_rounds": plan.config.anytime_rounds, "incremental": chain is not None,
    }
    low_rows = search_obj.low_rows if isinstance(search_obj, Rechecked) else 0
    return _result(found, opts, config, objective.rows + low_rows, low_rows, start,
                   stopped="time_budget" if ctx.deadline.hit else "done")


def _chain(clf: Classifier, x: torch.Tensor, plan: _Plan, opts: AttackSettings, rows: int) -> IncrementalPrefix | None:
    """The engine's incremental chain for the exact screen and the tightening (pixel features),
    when the model has one and it measures faster than plain forward passes (measured once per
    model and shape, cached as in the engine), else ``None``.

    Args:
        x: ``(N, C, H, W)`` the checked inputs (the first 8 are the probe).
    """
    if opts.features is not FeatureKind.PIXEL or x.shape[0] == 0:
        return None
    inc = build_chain(clf, _image_shape(x))
    if inc is None:
        return None
    probe = x[:8].detach().to(device=clf.device, dtype=clf.dtype)
    return inc if incremental_pays(clf, inc, probe, max(rows, _CHAIN_ROWS)) else None


def _image_shape(x: torch.Tensor) -> tuple[int, int, int]:
    """``(C, H, W)`` of a checked ``(N, C, H, W)`` batch."""
    c, h, w = (int(d) for d in x.shape[1:])
    return c, h, w


def _rows_per_call(clf: Classifier, shape: tuple[int, int, int], opts: AttackSettings) -> int:
    """Rows per model call: the user's ``batch_size`` or the memory plan (on a CPU at most
    :func:`cpu_rows`), capped by ``max_memory``."""
    rows = plan_batch_size(clf, shape, opts.batch_size, opts.max_memory)
    if opts.batch_size is None and clf.device.type == "cpu":
        rows = min(rows, cpu_rows(clf, shape))
    return rows


@dataclass(frozen=True, eq=False)
class _Plan:
    """The feature space, the colour grids and the search configuration of one call."""

    space: FeatureSpace
    palette: torch.Tensor  # (P, Cf) the ε-grid colours
    fine: torch.Tensor  # (Q, Cf) the re-colouring grid (step ε/2 where it has at most 64 colours)
    fine_steps: int
    config: SearchConfig
    differentiable: bool

    @classmethod
    def build(cls, clf: Classifier, shape: tuple[int, int, int], opts: AttackSettings) -> _Plan:
        differentiable = clf.modules() is not None
        if opts.screen is Screen.GRADIENT and not differentiable:
            raise ValueError("screen: 'gradient' needs a torch.nn.Module model; use 'exact' for plain callables")
        space = FeatureSpace(opts.features, shape)
        dev, dtype, steps = clf.device, clf.dtype, opts.steps
        palette = colours(grid_values(steps, clf.bounds, dtype=dtype), space.channels).to(dev)
        screen = _resolve_screen(opts.screen, differentiable, space.n * (palette.shape[0] - 1), opts.preset.exact_rows)
        fine_steps = 2 * steps if (2 * steps + 1) ** space.channels <= _FINE_MAX_COLOURS else steps
        fine = colours(grid_values(fine_steps, clf.bounds, dtype=dtype), space.channels).to(dev)
        mp = opts.max_pixels
        max_steps = space.n if mp is None else min(space.n, max(2 * mp, mp + 16))
        anytime = 0 if opts.time_budget is None else _ANYTIME_ROUNDS
        config = SearchConfig(screen=screen, preset=opts.preset, max_steps=max_steps, anytime_rounds=anytime)
        return cls(space, palette, fine, fine_steps, config, differentiable)


def _resolve_screen(screen: Screen, differentiable: bool, exact_cost: int, exact_rows: int) -> Screen:
    """``exact`` or ``gradient``: ``auto`` screens exactly where the model has no gradients or the
    exact screen costs at most ``exact_rows`` rows per input (``exact_cost``: features × other
    grid colours)."""
    if screen is Screen.AUTO:
        return Screen.EXACT if not differentiable or exact_cost <= exact_rows else Screen.GRADIENT
    return Screen.EXACT if screen is Screen.EXACT or not differentiable else Screen.GRADIENT


@dataclass(frozen=True, eq=False)
class _Found:
    """What the search of all inputs found, verified in full precision (CPU tensors ``(N, …)``)."""

    x_orig: torch.Tensor  # the inputs in the caller's dtype
    x_adv: torch.Tensor  # the examples in the caller's dtype (the original where none was found)
    labels_adv: torch.Tensor  # the model's labels of x_adv
    predicted: torch.Tensor  # the model's labels of the inputs
    misclassified: torch.Tensor
    labels: torch.Tensor | None
    found: torch.Tensor
    researched: int  # inputs searched again in full precision
    gradients: int


def _search(
    ctx: SearchContext,
    x: torch.Tensor,
    labels: torch.Tensor | None,
    objective: CountingObjective,
    search_obj: CountingObjective | Rechecked,
    shard_size: int,
    show_progress: bool,
) -> _Found:
    """Search every correctly classified input with ``search_obj``, verify the examples in full
    precision, and search again with the exact ``objective`` the inputs whose low-precision
    example does not verify."""
    clf, rows = ctx.model, ctx.batch_size
    x_orig = x.detach().to("cpu")
    x0 = x.detach().to(device=clf.device, dtype=clf.dtype)
    ref = torch.cat([objective.reference(clf, x0[i : i + rows]) for i in range(0, x0.shape[0], rows)])
    ref = ref.to(torch.int64)
    predicted = ref.cpu()
    misclassified = (predicted != labels) if labels is not None else torch.zeros(x0.shape[0], dtype=torch.bool)
    todo = (~misclassified).nonzero().squeeze(1)
    bar = _progress_bar(int(todo.numel())) if show_progress else None
    runner = ShardRunner(ctx, x0, ref, shard_size, bar, int(todo.numel()))
    try:
        runner.run(todo, search_obj)
        x_adv, labels_adv = _verified(clf, ctx.space, runner.best, x0, x_orig, rows)
        objective.rows += x0.shape[0]
        # an example found in low precision that does not flip the model: search again exactly
        redo = (runner.found & (labels_adv == predicted) & ~misclassified).nonzero().squeeze(1)
        if search_obj is objective:
            redo = redo[:0]  # a full-precision search has nothing to redo
        if redo.numel():
            runner.forget(redo)
            runner.run(redo, objective, progress=False, again=True)
            dr = redo.to(x0.device)
            xr, lr = _verified(clf, ctx.space, runner.best[dr], x0[dr], x_orig[redo], rows)
            objective.rows += int(redo.numel())
            x_adv[redo], labels_adv[redo] = xr, lr
    finally:
        if bar is not None:
            bar.close()
    return _Found(x_orig, x_adv, labels_adv, predicted, misclassified, labels, runner.found, int(redo.numel()),
                  runner.gradients)


def _progress_bar(total: int) -> ProgressBar:
    from tqdm.auto import tqdm

    bar: ProgressBar = tqdm(total=total, desc="attack", unit="input", dynamic_ncols=True)
    return bar


def _verified(
    clf: Classifier, space: FeatureSpace, best: torch.Tensor, x0: torch.Tensor, x_orig: torch.Tensor, rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Store the examples ``best`` ``(N, C, H, W)`` in the caller's dtype (unchanged features keep
    their exact original values) and label them with the model in full precision.

    Returns:
        ``x_adv`` ``(N, C, H, W)`` on the CPU and the model's labels ``(N,)``.
    """
    changed = space.changed(best, x0).cpu()
    stored = space.values(x_orig.clone())
    stored[changed] = space.values(best.to("cpu", stored.dtype))[changed]
    x_adv = space.images(stored)
    n = x_adv.shape[0]
    labels = [clf(x_adv[i : i + rows].to(clf.device, clf.dtype)).argmax(1).cpu() for i in range(0, n, rows)]
    return x_adv, torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)


def _result(f: _Found, opts: AttackSettings, config: dict[str, object], evaluations: int, low_rows: int,
            start: float, stopped: str) -> AttackResult:
    """The result (``start``: ``time.perf_counter()`` when the call began): L0 counted in
    positions ``(h, w)``; an example succeeds when it verified,
    changes at least one position and at most ``max_pixels``."""
    l0 = FeatureSpace(FeatureKind.PIXEL, _image_shape(f.x_orig)).l0(f.x_adv, f.x_orig)
    verified = f.found & (f.labels_adv != f.predicted) & (l0 >= 1) & ~f.misclassified
    mp = opts.max_pixels
    success = verified if mp is None else verified & (l0 <= mp)
    return AttackResult(
        x_adv=torch.where(success.view(-1, 1, 1, 1), f.x_adv, f.x_orig),
        success=success,
        l0=torch.where(success, l0, torch.zeros_like(l0)),
        found_l0=torch.where(verified, l0, torch.zeros_like(l0)),
        predicted=f.predicted,
        adversarial_label=torch.where(success, f.labels_adv, torch.full_like(f.labels_adv, -1)),
        misclassified=f.misclassified,
        labels=f.labels,
        evaluations=evaluations,
        gradients=f.gradients,
        seconds=time.perf_counter() - start,
        epsilon=opts.epsilon,
        features=opts.features.value,
        max_pixels=mp,
        stopped=stopped,
        config=config,
        low_precision_evaluations=low_rows,
        researched=f.researched,
    )
