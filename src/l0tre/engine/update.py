"""Bound updates: how a finished level-``t`` pass changes an input's bounds.

- **lower** (paper Thm. 1): no grid point of any ``t``-subset flips the label → ``lower ≥ t``;
- **upper**: every adversarial example, from a grid witness at distance ``t``, from the
  cumulative search (:mod:`.upper`) or from tightening (:mod:`.tighten`), is re-checked on the
  model in a separate forward pass before ``upper`` moves to its L0 − 1;
- **certified lower**: where the grid pass at ``t`` was clean, certification may prove ``t``
  for all real values.
"""

from __future__ import annotations

import torch

from ..execution.incremental import IncrementalPrefix
from ..result import Result
from .certified import Certifier
from .chain_rows import exact_objective
from .executor import Executor, InProcessExecutor, executor_parallelism
from .problem import Problem
from .search import SearchTask, search_units
from .sensitivity import UnitResult
from .subspaces import unrank

__all__ = ["accept", "certify_inputs", "finish_shard", "record_sensitivity"]


def accept(problem: Problem, result: Result, idx: torch.Tensor, x_cand: torch.Tensor, batch_size: int) -> int:
    """Re-check candidates ``x_cand`` ``(A, C, H, W)`` for inputs ``idx`` ``(A,)`` and keep those
    that are adversarial and shorter than the current best; returns the evaluations spent."""
    if idx.numel() == 0:
        return 0
    ok_all, labels_all = [], []
    exact = exact_objective(problem.objective)  # never a low-precision screen: a bound moves here
    for i in range(0, idx.numel(), batch_size):
        ov = exact.evaluate(problem.model, x_cand[i : i + batch_size],
                                        problem.ref[idx[i : i + batch_size].to(problem.ref.device)])
        ok_all.append(ov.success.cpu())
        labels_all.append(ov.label.cpu())
    ok = torch.cat(ok_all)
    adv_labels = torch.cat(labels_all)
    space = problem.space
    x0 = problem.x0[idx.to(problem.x0.device)]
    dist = space.l0(x_cand, x0).cpu()
    better = ok & (dist - 1 < result.upper[idx]) & (dist >= 1)
    sel = idx[better]
    result.upper[sel] = dist[better] - 1
    result.found[sel] = True
    # store in the caller's dtype: unchanged features keep their exact original values
    keep = better.to(x_cand.device)
    changed = space.changed(x_cand[keep], x0[keep]).cpu()
    base = problem.x_orig[sel].clone()
    stored = space.values(base).clone()
    stored[changed] = space.values(x_cand[keep].to("cpu", stored.dtype))[changed]
    result.adversarial[sel] = space.images(stored, base=base)
    result.adversarial_label[sel] = adv_labels[better]
    return int(idx.numel())


def _witnesses(problem: Problem, result: Result, blocked: torch.Tensor, t: int, inputs: torch.Tensor,
               acc: UnitResult, batch_size: int) -> tuple[torch.Tensor, int]:
    """Verify the grid witnesses (flips at distance ``t``); returns the mask ``(Na,)`` of inputs
    that had one, and the evaluations spent. An unverified witness blocks the input."""
    has_w = acc.w_rank >= 0
    if not bool(has_w.any()):
        return has_w, 0
    wi = inputs[has_w]
    dev = problem.x0.device
    subs = unrank(acc.w_rank[has_w], problem.n, t, problem.table(t)).to(dev)
    xw = problem.x0[wi.to(dev)].clone()
    problem.space.scatter(xw, subs, problem.context(t).values(acc.w_point[has_w].to(dev)))
    spent = accept(problem, result, wi, xw, batch_size)
    blocked[wi[result.upper[wi] != t - 1]] = True
    return has_w, spent


def finish_shard(problem: Problem, result: Result, blocked: torch.Tensor, t: int, inputs: torch.Tensor,
                 acc: UnitResult, *, batch_size: int, tighten_rows: int,
                 chain: IncrementalPrefix | None = None, executor: Executor | None = None, shard: int = 0) -> int:
    """Lower bounds, upper bounds and tightening for a shard whose level-``t`` pass is complete.

    Args:
        inputs: ``(Na,)`` global indices; acc: their merged unit results.
        batch_size: rows per plain model call; tighten_rows: rows per call when tightening
            through ``chain`` (an :class:`~l0tre.execution.incremental.IncrementalPrefix`).
        executor: runs the search of the open inputs (:mod:`.search`; default: here);
            shard: the shard's index, named in its search units.

    Returns:
        the model evaluations spent (upper-bound search, tightening, re-checks).
    """
    has_w, spent = _witnesses(problem, result, blocked, t, inputs, acc, batch_size)
    clean = inputs[~has_w]
    result.lower[clean] = torch.maximum(result.lower[clean], torch.full_like(result.lower[clean], t)).clamp_max(
        result.upper[clean])
    open_mask = (result.lower[inputs] < result.upper[inputs]) & ~has_w
    if not bool(open_mask.any()):
        return spent
    rows = open_mask.nonzero().squeeze(1)
    oi = inputs[rows]
    task = _search_task(problem, t, oi, acc, rows, batch_size, tighten_rows, chain)
    run = executor if executor is not None else InProcessExecutor()
    done = sorted(((u.r0, r) for u, r in run.map(task, search_units(shard, task.rows, executor_parallelism(run)))),
                  key=lambda item: item[0])
    found = torch.cat([r.found.cpu() for _, r in done])
    spent += sum(int(r.evaluations.sum()) for _, r in done)
    if bool(found.any()):
        x = torch.cat([r.x.to(problem.x0.device) for _, r in done])
        spent += accept(problem, result, oi[found], x[found.to(x.device)], batch_size)
    return spent


def _search_task(problem: Problem, t: int, oi: torch.Tensor, acc: UnitResult, rows: torch.Tensor,
                 batch_size: int, tighten_rows: int, chain: IncrementalPrefix | None) -> SearchTask:
    """The search of inputs ``oi`` ``(A,)``: their subsets ``acc.rank[rows]`` in order, with values."""
    dev = problem.x0.device
    rank = acc.rank[rows]
    present = rank >= 0
    feats = unrank(rank.clamp_min(0).reshape(-1), problem.n, t, problem.table(t)).view(*rank.shape, t)
    vals = problem.context(t).values(acc.point[rows].clamp_min(0).reshape(-1).to(dev)).view(*rank.shape, t, -1)
    return SearchTask(model=problem.model, objective=problem.objective, space=problem.space,
                      x0=problem.x0[oi.to(dev)], ref=problem.ref[oi.to(dev)], feats=feats.to(dev), vals=vals,
                      present=present.to(dev), batch_size=batch_size, tighten_rows=tighten_rows,
                      incremental=chain)


def record_sensitivity(problem: Problem, result: Result, inputs: torch.Tensor, acc: UnitResult) -> None:
    """Store the level-1 sensitivities of ``inputs`` in ``result.sensitivity``: per feature the
    lowest score (margin) over its grid colours (``inf`` where no colour is a change)."""
    if result.sensitivity is None:
        return
    flat = result.sensitivity.view(result.sensitivity.shape[0], -1)
    kept = acc.rank >= 0  # at t = 1 the colex rank of a subset is its feature index
    rows = inputs.unsqueeze(1).expand_as(acc.rank)[kept]
    flat[rows, problem.space.full_index(acc.rank[kept])] = acc.score[kept].to(flat.dtype)

def certify_inputs(certifier: Certifier | None, problem: Problem, result: Result, t: int,
                   inputs: torch.Tensor) -> None:
    """Try to certify level ``t`` for inputs whose grid pass at ``t`` was clean and whose level
    ``t − 1`` is certified."""
    if certifier is None or result.certified_lower is None:
        return
    for i in inputs.tolist():
        if result.certified_lower[i] == t - 1 and result.lower[i] >= t:
            if certifier.level(problem.x0[i], int(problem.ref[i]), t):
                result.certified_lower[i] = t
