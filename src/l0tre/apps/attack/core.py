"""``l0tre.attack``: a competitive minimal-L0 attack built on the engine's upper-bound path.

Pipeline per shard of inputs (all batched, see :mod:`.search`):

1. **screen** — single-feature sensitivities (the paper's level t = 1): every feature × every
   ε-grid colour (``screen="exact"``), or the ``candidates`` (feature, colour) pairs that a
   first-order estimate of the margin ranks best (``screen="gradient"``). A single-feature
   adversarial example ends the search for that input (L0 = 1 is minimal).
2. **candidates** — the paper's cumulative path in two orderings (by confidence, as the
   engine, and by margin) and an adaptive greedy forward selection (each step evaluates
   candidate additions exactly and keeps the lowest margin); every candidate is tightened
   with the engine's greedy reverts and the smallest (then lowest-margin) one is kept.
3. **refine** — rounds of: remove two changed pixels and add one (L0 − 1), swap one changed
   pixel for another and re-colour changed pixels on a finer grid when that lowers the margin,
   then tighten again.
4. **verify** — every returned example is re-checked on the model in a separate forward
   pass; L0 is counted in positions ``(h, w)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch

from ...classifier import Classifier, ModelLike, as_classifier, ieee_float32
from ...engine.features import FeatureKind, FeatureSpace
from ...engine.grid import check_epsilon, colours, grid_values
from ...engine.options import check_inputs, check_labels
from ...execution.memory import DEFAULT_MAX_MEMORY, layer_output_bytes, plan_batch_size
from ...execution.modes import tune
from ...execution.precision import LowPrecisionModel, Precision, Rechecked, choose_precision
from .result import AttackResult
from .search import CountingObjective, Deadline, SearchConfig, Searcher, pick

__all__ = ["attack", "cpu_rows", "EFFORTS", "SCREENS"]

SCREENS = ("auto", "exact", "gradient")
#: search presets (:class:`~l0tre.attack.search.SearchConfig` fields). ``fast`` (round 7): a
#: greedy step tries the 8 best gradient-ranked additions, one colour per pixel, no pool entries.
#: With 4 + 2 (the round-6 preset) CIFAR-10 paths often wandered (greedy examples of up to 40
#: pixels, tightened to 6 at a quadratic cost in single reverts); 8 + 0 halves the model rows
#: there (154 → 80 rows + 3 per gradient per image, mean L0 4.53 → 4.04 on the 94 benchmark images)
#: and costs MNIST ≈ 15 % more rows for a lower L0 (8.29 → 8.19 on 300 images).
EFFORTS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "fast": MappingProxyType({"candidates": 16, "per_step": 8, "pool": 0, "colours_per_feature": 1, "rounds": 0,
                             "orderings": False}),
    "default": MappingProxyType({"candidates": 128, "per_step": 16, "pool": 8, "rounds": 2}),
    "thorough": MappingProxyType({"candidates": 512, "per_step": 32, "pool": 16, "rounds": 4, "starts": 2}),
})
_FINE_MAX_COLOURS = 64
_CPU_CACHE_BYTES = 6 << 20


def _opt_int(name: str, value: object, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an integer >= {minimum} or None, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return value


def _int(name: str, value: object, minimum: int) -> int:
    out = _opt_int(name, value, minimum)
    if out is None:
        raise TypeError(f"{name}: expected an integer >= {minimum}, got None")
    return out


def _budget(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)) or value <= 0:
        raise ValueError(f"time_budget: expected a positive number of seconds or None, got {value!r}")
    return float(value)


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
    screen: str = "auto",
    effort: str = "default",
    candidates: int | None = None,
    rounds: int | None = None,
    shard_size: int = 256,
    mode: str = "auto",
    precision: str = "auto",
) -> AttackResult:
    """Find adversarial examples with as few changed pixels as possible.

    Args:
        model: an :class:`l0tre.Classifier`, a ``torch.nn.Module`` (logits, inputs in
            ``[0, 1]``) or a callable ``(N, C, H, W) → (N, classes)``.
        x: ``(N, C, H, W)`` float inputs inside the model's bounds.
        max_pixels: L0 budget; examples changing more positions are reported unsuccessful
            (``found_l0`` keeps their size). ``None``: unlimited.
        epsilon: value grid step as a fraction of the input range (must divide 1): changed
            features take ε-grid colours (all channel combinations); re-colouring uses the
            grid of step ε/2 where it has at most 64 colours.
        time_budget: seconds; the search stops at the next move boundary and returns the
            best verified examples found so far.
        seed: recorded for reproducibility; the search itself is deterministic (ties are
            broken by feature and colour index), so results do not depend on it.
        batch_size: rows per model call (capped by ``max_memory`` bytes); results do not
            depend on it.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``... (``None``: the model's device).
        features: ``"pixel"`` (a position, all channels; default) or ``"element"`` — what the
            search changes; ``l0`` always counts positions.
        labels: ``(N,)`` true labels; inputs the model misclassifies are flagged
            (``misclassified``) and not attacked.
        show_progress: a tqdm bar on stderr.
        screen: ``"exact"`` (every feature × every grid colour, the paper's t = 1 pass; with
            it the result is never larger than ``l0tre.evaluate(..., t_max=1)``'s upper bound
            + 1), ``"gradient"`` (only the ``candidates`` pairs ranked best by the gradient of
            the margin; needs a ``torch.nn.Module``) or ``"auto"`` (gradient when possible).
        effort: a preset of the search breadth (see :data:`EFFORTS`): ``"fast"`` (3–6× cheaper
            than ``"default"`` on the benchmark workloads, 10–35 % larger L0: no refinement
            rounds), ``"default"`` or ``"thorough"`` (wider screening, more refinement).
            ``candidates`` and ``rounds`` override it.
        candidates: (feature, colour) pairs screened exactly in gradient mode.
        rounds: refinement rounds after the first tightening (0: none).
        shard_size: inputs searched together (memory grows with it; results do not depend on it).
        mode: execution mode of the model, as in :func:`l0tre.evaluate`: ``"auto"`` (channels_last
            when it measures faster), ``"eager"``, ``"channels_last"``, ….
        precision: ``"auto"`` (a bfloat16 copy of the model screens candidates where the device
            has bfloat16 matrix units: CPUs with AMX, CUDA GPUs of compute capability ≥ 8.0),
            ``"float32"`` or ``"bfloat16"``. In bfloat16
            every decision within a calibrated tolerance of the boundary is re-checked in full
            precision, the returned examples are verified in full precision, and an input whose
            example does not verify is searched again in full precision. The search path (hence
            the examples found) can differ between precisions.

    Returns:
        an :class:`~l0tre.attack.result.AttackResult`.

    Raises:
        TypeError, ValueError: invalid arguments (messages name the argument).
    """
    start = time.perf_counter()
    steps = check_epsilon(epsilon)
    mp = _opt_int("max_pixels", max_pixels)
    budget = _budget(time_budget)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an integer, got {type(seed).__name__} {seed!r}")
    if not isinstance(screen, str) or screen not in SCREENS:
        raise ValueError(f"screen: expected one of {SCREENS}, got {screen!r}")
    if not isinstance(effort, str) or effort not in EFFORTS:
        raise ValueError(f"effort: expected one of {tuple(EFFORTS)}, got {effort!r}")
    preset = dict(EFFORTS[effort])
    if candidates is not None:
        preset["candidates"] = _int("candidates", candidates, 1)
    if rounds is not None:
        preset["rounds"] = _int("rounds", rounds, 0)
    shard = _int("shard_size", shard_size, 1)
    Precision.parse(precision)  # validated before any work
    if not isinstance(features, (str, FeatureKind)):
        raise TypeError(f"features: expected 'pixel' or 'element', got {type(features).__name__}")
    kind = FeatureKind.parse(features)
    clf = as_classifier(model, device=device)
    x = check_inputs(x, clf)
    lab = check_labels(labels, x.shape[0])
    bs = _opt_int("batch_size", batch_size)
    rows = plan_batch_size(clf, tuple(x.shape[1:]), bs, _int("max_memory", max_memory, 1))
    if bs is None and clf.device.type == "cpu":
        rows = min(rows, cpu_rows(clf, tuple(x.shape[1:])))
    tune(clf, tuple(x.shape[1:]), rows, rows, mode)  # execution mode only (rows are fixed here)
    differentiable = clf.modules() is not None
    if screen == "gradient" and not differentiable:
        raise ValueError("screen: 'gradient' needs a torch.nn.Module model; use 'exact' for plain callables")
    mode = "exact" if screen == "exact" or not differentiable else "gradient"

    n_in = x.shape[0]
    shape = tuple(x.shape[1:])
    space = FeatureSpace(kind, shape)  # type: ignore[arg-type]
    pixels = FeatureSpace(FeatureKind.PIXEL, shape)  # type: ignore[arg-type]
    dev, dtype = clf.device, clf.dtype
    palette = colours(grid_values(steps, clf.bounds, dtype=dtype), space.channels).to(dev)
    fine_steps = 2 * steps if (2 * steps + 1) ** space.channels <= _FINE_MAX_COLOURS else steps
    fine = colours(grid_values(fine_steps, clf.bounds, dtype=dtype), space.channels).to(dev)
    cfg = SearchConfig(screen=mode, **preset,
                       max_steps=space.n if mp is None else min(space.n, max(2 * mp, mp + 16)))
    objective = CountingObjective()
    prec = choose_precision(clf, precision)
    search_obj: CountingObjective | Rechecked = objective
    if prec is Precision.BF16:
        search_obj = Rechecked(objective, LowPrecisionModel(clf))
    deadline = Deadline(budget)

    x_orig = x.detach().to("cpu")
    x0_all = x.detach().to(device=dev, dtype=dtype)
    ref = torch.cat([objective.reference(clf, x0_all[i : i + rows]) for i in range(0, n_in, rows)]).to(torch.int64)
    predicted = ref.cpu()
    misclassified = (predicted != lab) if lab is not None else torch.zeros(n_in, dtype=torch.bool)
    todo = (~misclassified).nonzero().squeeze(1)

    best = x0_all.clone()
    found = torch.zeros(n_in, dtype=torch.bool)
    gradients = 0
    bar: Any = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(todo.numel()), desc="attack", unit="input", dynamic_ncols=True)

    def run(inputs: torch.Tensor, obj: CountingObjective | Rechecked, progress: bool) -> None:
        nonlocal gradients
        for s0 in range(0, int(inputs.numel()), shard):
            if deadline.passed():
                break
            idx = inputs[s0 : s0 + shard]
            di = idx.to(dev)
            if isinstance(obj, Rechecked):
                obj.calibrate(clf, x0_all[di], ref[di])
            searcher = Searcher(clf, space, x0_all[di], ref[di], palette, fine, obj,
                                batch_size=rows, grad_rows=max(1, rows // 2), differentiable=differentiable,
                                config=cfg, deadline=deadline)
            f, xs = _search_shard(searcher, cfg)
            gradients += searcher.gradients
            best[di] = xs
            found[idx] = f.cpu()
            if bar is not None and progress:
                bar.update(int(idx.numel()))
                bar.set_postfix_str(f"found {int(found.sum())}/{int(todo.numel())}")

    try:
        run(todo, search_obj, True)
        x_adv, labels_adv = _verified(clf, space, best, x0_all, x_orig, rows)
        objective.rows += n_in
        # an example found in low precision that does not flip the model: search again exactly
        redo = (found & (labels_adv == predicted) & ~misclassified).nonzero().squeeze(1)
        if search_obj is objective:
            redo = redo[:0]  # a full-precision search has nothing to redo
        if redo.numel():
            dr = redo.to(dev)
            best[dr] = x0_all[dr]
            found[redo] = False
            run(redo, objective, False)
            xr, lr = _verified(clf, space, best[dr], x0_all[dr], x_orig[redo], rows)
            objective.rows += int(redo.numel())
            x_adv[redo], labels_adv[redo] = xr, lr
    finally:
        if bar is not None:
            bar.close()

    l0 = pixels.l0(x_adv, x_orig)
    verified = found & (labels_adv != predicted) & (l0 >= 1) & ~misclassified
    found_l0 = torch.where(verified, l0, torch.zeros_like(l0))
    success = verified if mp is None else verified & (l0 <= mp)
    x_adv = torch.where(success.view(-1, 1, 1, 1), x_adv, x_orig)
    low_rows = search_obj.low_rows if isinstance(search_obj, Rechecked) else 0
    return AttackResult(
        x_adv=x_adv,
        success=success,
        l0=torch.where(success, l0, torch.zeros_like(l0)),
        found_l0=found_l0,
        predicted=predicted,
        adversarial_label=torch.where(success, labels_adv, torch.full_like(labels_adv, -1)),
        misclassified=misclassified,
        labels=lab,
        evaluations=objective.rows + low_rows,
        gradients=gradients,
        seconds=time.perf_counter() - start,
        epsilon=float(epsilon),
        features=kind.value,
        max_pixels=mp,
        stopped="time_budget" if deadline.hit else "done",
        config={"screen": mode, "effort": effort, **preset, "seed": seed,
                "batch_size": rows, "fine_steps": fine_steps, "device": str(dev), "mode": clf.mode,
                "precision": prec.value},
        low_precision_evaluations=low_rows,
        researched=int(redo.numel()),
    )


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


def _search_shard(s: Searcher, cfg: SearchConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the pipeline on one shard. Returns ``found`` ``(A,)`` and examples ``(A, C, H, W)``."""
    unit = s.screen()
    found, x = s.witness(unit)
    rest = (~found).nonzero().squeeze(1)
    if rest.numel() == 0 or s.deadline.passed():
        return found, x
    # local indices: the candidate rows' owner is the position in `rest`
    local = torch.arange(rest.numel(), device=s.dev)
    rep = local.repeat(cfg.starts)
    start = torch.arange(cfg.starts, device=s.dev).repeat_interleave(rest.numel())
    fg, xg = s.greedy(rest[rep], start, cfg.max_steps)
    owners, xs = [rep[fg]], [xg[fg]]
    if cfg.orderings:
        o, f, xo = s.orderings(unit, rest)
        pos = torch.cat([local, local])
        # drop the margin ordering where it equals the confidence ordering
        same = (xo[: rest.numel()] == xo[rest.numel() :]).flatten(1).all(1)
        keep = f & torch.cat([torch.ones_like(same), ~same])
        if cfg.screen != "exact":
            # gradient mode: tighten an ordering only when it is not much longer than the greedy path
            lg_all = torch.where(fg, s.space.l0(xg, s.x0[rest[rep]]), torch.full_like(rep, 1 << 40))
            lg = torch.full_like(local, 1 << 40).scatter_reduce(0, rep, lg_all, "amin")
            keep &= s.space.l0(xo, s.x0[rest[pos]]) <= lg[pos] + cfg.ordering_slack
        owners.append(pos[keep])
        xs.append(xo[keep])
    owner = torch.cat(owners)
    cand = torch.cat(xs)
    if owner.numel() == 0:
        return found, x
    cand = s.tighten(rest[owner], cand)
    # _best_rows compares against the originals of the rows' inputs: pass global owners
    choice = _best_rows_local(s, rest, owner, cand)
    has = choice >= 0
    rows = rest[has]
    xr = cand[choice[has]]
    xr = _refine(s, rows, xr, cfg)
    x[rows] = xr
    found[rows] = True
    return found, x


def _best_rows_local(s: Searcher, rest: torch.Tensor, owner: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """:func:`_best_rows` for candidate rows owned by positions ``owner`` in ``rest``."""
    g = rest[owner]
    score, succ = s.margins_of(g, cand)
    l0 = s.space.l0(cand, s.x0[g]).to(torch.float64)
    # lexicographic (l0, score): scores are squashed into (-0.5, 0.5)
    key = l0 + torch.atan(score) / math.pi
    return pick(owner, key, succ, int(rest.numel()))


def _refine(s: Searcher, rows: torch.Tensor, x: torch.Tensor, cfg: SearchConfig) -> torch.Tensor:
    """Refinement rounds on adversarial examples ``x`` ``(B, C, H, W)`` of inputs ``rows``.

    Every round tries :meth:`Searcher.reduce` (L0 − 1); where it fails and another round
    follows, :meth:`Searcher.swap` and :meth:`Searcher.recolour` lower the margin (which is
    what lets a later reduce or tighten succeed), then the engine's tightening runs again.
    Inputs stop when a round changes nothing.
    """
    if rows.numel() == 0:
        return x
    score, _ = s.margins_of(rows, x)
    active = torch.ones(rows.shape[0], dtype=torch.bool, device=s.dev)
    for r in range(cfg.rounds):
        if not bool(active.any()) or s.deadline.passed():
            break
        a = active.nonzero().squeeze(1)
        xa, sa = x[a], score[a]
        red, xa = s.reduce(xa, rows[a])
        moved = red.clone()
        k = (~red).nonzero().squeeze(1)
        if k.numel() and r + 1 < cfg.rounds and not s.deadline.passed():
            sw, xk, sk = s.swap(xa[k], rows[a[k]], sa[k])
            rc, xk, sk = s.recolour(xk, rows[a[k]], sk)
            xa[k] = xk
            moved[k] = sw | rc
        m = moved.nonzero().squeeze(1)
        if m.numel():
            xa[m] = s.tighten(rows[a[m]], xa[m])
        sc, ok = s.margins_of(rows[a], xa)
        # a move is only kept when its result re-checks as adversarial (guards nondeterminism)
        keep = ok
        x[a[keep]] = xa[keep]
        score[a[keep]] = sc[keep]
        active[a] = moved & keep
    return x
