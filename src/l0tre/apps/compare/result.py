"""The outcome of a model comparison: per model and level the bounds of every input, the table of
the paper's Figs. 8–9 and a ranking with paired confidence intervals (:class:`CompareResult`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..study.levels import LevelRecord
from .stats import PairedTest, holm, paired_t

__all__ = ["CompareResult", "Ranking"]


@dataclass(frozen=True)
class Ranking:
    """Models ordered by global robustness estimate at level ``t`` (most robust first).

    Attributes:
        t: the level; inputs: the inputs it is computed on.
        order: the names, most robust first (estimate, then global lower bound, then name).
        pairs: every pair (higher-ranked first): paired t test of the per-input estimates,
            Holm-adjusted over all pairs.
        worst_case: per pair, the paired test of ``lower_a − upper_b`` (``a`` ranked higher):
            a significantly positive mean (:meth:`holds_in_worst_case`) means ``a`` is more robust
            even if every true radius sits at the end of its bounds least favourable to ``a``.
        separated: per pair, whether ``global_lower(a) > global_upper(b)`` on these inputs.
    """

    t: int
    inputs: int
    order: list[str]
    pairs: list[PairedTest]
    worst_case: list[PairedTest]
    separated: list[bool]

    def holds_in_worst_case(self, k: int) -> bool:
        """Pair ``k``: ``mean(lower_a − upper_b) > 0``, significant after Holm's correction."""
        w = self.worst_case[k]
        return w.significant() and w.mean > 0

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.t, "inputs": self.inputs, "order": list(self.order),
                "pairs": [p.to_dict() for p in self.pairs],
                "worst_case": [{**p.to_dict(), "holds": self.holds_in_worst_case(k)}
                               for k, p in enumerate(self.worst_case)],
                "separated": list(self.separated)}

    def statements(self) -> list[str]:
        """One sentence per adjacent pair of the ranking."""
        out = []
        for a, b in zip(self.order, self.order[1:], strict=False):
            k = next(i for i, p in enumerate(self.pairs) if (p.a, p.b) == (a, b))
            p = self.pairs[k]
            verdict = "significantly" if p.significant() else "not significantly"
            extra = "; also in the worst case of the bounds" if self.holds_in_worst_case(k) else ""
            out.append(f"t={self.t}: {a} ≥ {b}: difference of estimates {p.mean:+.3f} "
                       f"[{p.ci_low:+.3f}, {p.ci_high:+.3f}] ({100 * p.confidence:.0f}% paired t interval, "
                       f"unadjusted; Holm-adjusted p = {p.p_holm:.3g}): {verdict} more robust{extra}")
        return out


@dataclass
class CompareResult:
    """Per model and level the state after that level (``LevelRecord``, per-input tensors of the
    level's inputs: all ``N`` at t = 1, the first ``deep_inputs`` at t ≥ 2).

    Attributes:
        names: the models, in the order given.
        accuracy: per model, accuracy on the ``N`` inputs (``None`` without labels).
        levels: per model name, its records for t = 1, 2, … (a level every input had converged
            before is carried over with no work).
        inputs: ``N``; deep_inputs: the inputs of levels t ≥ 2.
        t_max: the last level asked for; stopped: ``"done"``, ``"time_budget"`` or ``"interrupted"``.
        confidence: level of the confidence intervals.
    """

    names: list[str]
    accuracy: list[float | None]
    levels: dict[str, list[LevelRecord]]
    inputs: int
    deep_inputs: int
    t_max: int
    stopped: str = "done"
    confidence: float = 0.95

    @property
    def seconds(self) -> dict[str, float]:
        """Per model: wall seconds of its levels (over interrupted and resumed runs)."""
        return {n: sum(r.seconds for r in self.levels.get(n, [])) for n in self.names}

    def complete_levels(self) -> list[int]:
        """The levels every model completed."""
        common = [{r.t for r in self.levels.get(n, [])} for n in self.names]
        return sorted(set.intersection(*common)) if common else []

    def record(self, name: str, t: int) -> LevelRecord | None:
        """Model ``name``'s record of level ``t``, or ``None``."""
        return next((r for r in self.levels.get(name, []) if r.t == t), None)

    def table(self) -> list[dict[str, Any]]:
        """One row per (level, model): accuracy, global bounds, estimate, radius, mean ± std of
        the per-input estimates and radii (paper Figs. 8–9), converged inputs, seconds."""
        rows = []
        for t in sorted({r.t for recs in self.levels.values() for r in recs}):
            for name, acc in zip(self.names, self.accuracy, strict=True):
                r = self.record(name, t)
                if r is None:
                    continue
                est = (r.lower + r.upper).double().numpy() / 2
                rad = (r.upper - r.lower).double().numpy() / 2
                row: dict[str, Any] = {
                    "t": t, "model": name, "accuracy": acc, "inputs": int(r.lower.numel()),
                    "lower": r.global_lower, "upper": r.global_upper, "estimate": r.estimate, "radius": r.radius,
                    "estimate_mean": float(est.mean()), "estimate_std": float(est.std(ddof=1)) if est.size > 1 else 0.0,
                    "radius_mean": float(rad.mean()), "radius_std": float(rad.std(ddof=1)) if rad.size > 1 else 0.0,
                    "converged": r.converged, "seconds": r.seconds, "evaluations": r.evaluations,
                }
                if r.certified_lower is not None:
                    row["certified_lower"] = float(r.certified_lower.double().mean())
                rows.append(row)
        return rows

    def ranking(self, t: int) -> Ranking:
        """The ranking at level ``t`` with all pairwise paired tests (Holm over the pairs).

        Raises:
            ValueError: some model has not completed level ``t``.
        """
        recs = {n: self.record(n, t) for n in self.names}
        missing = [n for n, r in recs.items() if r is None]
        if missing:
            raise ValueError(f"t: expected a level every model completed ({self.complete_levels()}), got {t} "
                             f"(not completed by {', '.join(missing)})")
        done = {n: r for n, r in recs.items() if r is not None}
        order = sorted(self.names, key=lambda n: (-done[n].estimate, -done[n].global_lower, n))
        est = {n: (done[n].lower + done[n].upper).double().numpy() / 2 for n in order}
        pairs, worst, sep = [], [], []
        for i, a in enumerate(order):
            for b in order[i + 1:]:
                pairs.append(paired_t(a, b, est[a], est[b], self.confidence))
                worst.append(paired_t(a, b, done[a].lower.double().numpy(), done[b].upper.double().numpy(),
                                      self.confidence))
                sep.append(done[a].global_lower > done[b].global_upper)
        pairs = _with_holm(pairs)
        worst = _with_holm(worst)
        return Ranking(t=t, inputs=int(done[order[0]].lower.numel()), order=order, pairs=pairs,
                       worst_case=worst, separated=sep)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: ``models``, ``table``, ``rankings`` (per complete level) and per
        model and level the per-input ``lower`` / ``upper`` lists."""
        per_input = {n: [{"t": r.t, "lower": r.lower.tolist(), "upper": r.upper.tolist(),
                          **({"certified_lower": r.certified_lower.tolist()} if r.certified_lower is not None
                             else {})} for r in self.levels.get(n, [])] for n in self.names}
        return {
            "models": [{"name": n, "accuracy": a, "seconds": self.seconds.get(n, 0.0),
                        "levels": [r.t for r in self.levels.get(n, [])]}
                       for n, a in zip(self.names, self.accuracy, strict=True)],
            "inputs": self.inputs, "deep_inputs": self.deep_inputs, "t_max": self.t_max,
            "stopped": self.stopped, "confidence": self.confidence,
            "complete_levels": self.complete_levels(),
            "table": self.table(),
            "rankings": [self.ranking(t).to_dict() for t in self.complete_levels()],
            "per_input": per_input,
        }


def _with_holm(tests: list[PairedTest]) -> list[PairedTest]:
    """The tests with their Holm-adjusted p-values filled in."""
    adjusted = holm([t.p for t in tests])
    return [replace(t, p_holm=p) for t, p in zip(tests, adjusted, strict=True)]

