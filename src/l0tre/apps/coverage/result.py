""":class:`CoverageResult`: what :func:`l0tre.coverage` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .neurons import Layer, describe
from .search import LevelRecord

__all__ = ["CoverageResult"]


@dataclass(frozen=True)
class CoverageResult:
    """Neuron coverage of a set of seeds, and the tests generated to raise it.

    Neuron tensors are ``(T,)`` over all neurons in layer order (``layers`` gives the ranges);
    test tensors are ``(K,)`` / ``(K, C, H, W)``.

    Attributes:
        neurons: the definition, ``"channel"`` or ``"element"``; ``threshold`` the activation a
            neuron must exceed.
        layers: the hidden activations counted.
        before: ``(T,)`` bool, covered by the seeds themselves.
        after: ``(T,)`` bool, covered by the seeds or a generated (re-checked) test.
        unreachable: ``(T,)`` bool, proven never to exceed the threshold for any input in the
            model's input domain (sound bounds; never covered).
        test_of: ``(T,)`` index of the generated test that covers a neuron, ``-1`` if none.
        x: ``(K, C, H, W)`` the generated tests (pixel space); ``seed`` ``(K,)`` the index of the
            seed each comes from; ``l0`` ``(K,)`` pixels changed; ``label`` ``(K,)`` the model's
            label of the test; ``seed_label`` ``(K,)`` the model's label of its seed.
        levels: one record per searched level; ``stopped``: ``"complete"`` (nothing left to
            find), ``"t_max"``, ``"time_budget"``, ``"interrupted"`` or ``"measure_only"``;
            ``seconds``: wall time.
        per_neuron_seed_best: ``(T,)`` the largest value of each neuron over the seeds.
        upper_bound: ``(T,)`` float64, for the neurons the search left open, the best proven
            upper bound of the value over the whole input domain (CROWN, :mod:`.proofs`); NaN
            for the others.
        not_coverable: ``(T,)`` int64 with ``certify`` (else empty): for each neuron examined
            (not covered within L0 ≤ ``certify_t``, not unreachable), the largest ``t`` at which
            it is proven that no change of ``t`` pixels of any seed fires it (``0``: none);
            ``-1`` for the neurons not examined. ``certify_t``: the level asked (``0``: not run).
        proof_stats: seconds and counts of the proofs run after the search (``fired_real``:
            examined neurons a real-valued change of ``t`` pixels was seen to fire, per ``t``).
    """

    neurons: str
    threshold: float
    layers: tuple[Layer, ...]
    before: Tensor
    after: Tensor
    unreachable: Tensor
    test_of: Tensor
    x: Tensor
    seed: Tensor
    l0: Tensor
    label: Tensor
    seed_label: Tensor
    levels: tuple[LevelRecord, ...]
    stopped: str
    seconds: float
    per_neuron_seed_best: Tensor = field(repr=False, default_factory=lambda: torch.empty(0))
    upper_bound: Tensor = field(repr=False, default_factory=lambda: torch.empty(0))
    not_coverable: Tensor = field(repr=False, default_factory=lambda: torch.empty(0, dtype=torch.int64))
    certify_t: int = 0
    proof_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return int(self.before.numel())

    @property
    def coverage_before(self) -> float:
        """Fraction of all neurons covered by the seeds."""
        return int(self.before.sum()) / self.total if self.total else 0.0

    @property
    def coverage_after(self) -> float:
        """Fraction of all neurons covered by the seeds and the generated tests."""
        return int(self.after.sum()) / self.total if self.total else 0.0

    @property
    def coverage_reachable(self) -> float:
        """Fraction of the neurons not proven unreachable that are covered."""
        live = int((~self.unreachable).sum())
        return float(self.after.sum()) / live if live else 1.0

    @property
    def adversarial(self) -> int:
        """Generated tests whose label differs from their seed's (adversarial examples too)."""
        return int((self.label != self.seed_label).sum())

    def describe(self, neuron: int) -> str:
        """The name of neuron ``neuron``: ``layer[c]`` or ``layer[c,h,w]``."""
        return describe(self.layers, self.neurons, neuron)

    def covered_by(self, test: int) -> Tensor:
        """Indices of the neurons generated test ``test`` was kept for ``(M,)``."""
        return (self.test_of == test).nonzero().squeeze(1)

    def per_layer(self) -> list[dict[str, Any]]:
        """Per hidden layer: neurons, covered before / after, unreachable."""
        out = []
        for layer in self.layers:
            sl = slice(layer.offset, layer.offset + layer.count)
            out.append({"layer": layer.name, "after_node": layer.after, "shape": list(layer.shape),
                        "neurons": layer.count, "before": int(self.before[sl].sum()),
                        "after": int(self.after[sl].sum()), "unreachable": int(self.unreachable[sl].sum())})
        return out

    def coverage_dict(self) -> dict[str, Any]:
        """The ``coverage`` section of ``results.json`` (``before`` / ``after`` are fractions)."""
        return {"neurons": self.neurons, "threshold": self.threshold, "total": self.total,
                "before": self.coverage_before, "after": self.coverage_after,
                "unreachable": int(self.unreachable.sum()), "after_of_reachable": self.coverage_reachable,
                "per_layer": self.per_layer(), **self._proof_dict()}

    def _proof_dict(self) -> dict[str, Any]:
        """``open_upper_bounds`` (the open neurons' best proven upper bounds) and, with
        ``certify``, ``not_coverable``."""
        out: dict[str, Any] = {}
        if self.upper_bound.numel():
            still = (~torch.isnan(self.upper_bound) & ~self.unreachable & ~self.after).nonzero().squeeze(1)
            out["open_upper_bounds"] = {self.describe(int(i)): float(self.upper_bound[i]) for i in still.tolist()}
        if self.certify_t > 0 and self.not_coverable.numel():
            nc = self.not_coverable
            proven = (nc >= self.certify_t).nonzero().squeeze(1)
            examined = (nc >= 0).nonzero().squeeze(1)
            out["not_coverable"] = {
                "t": self.certify_t, "count": int(proven.numel()),
                "neurons": [self.describe(int(i)) for i in proven.tolist()],
                "examined": int(examined.numel()),
                "uncovered_count": int(((nc >= self.certify_t) & ~self.after).sum()),
                "largest_t": {self.describe(int(i)): int(nc[i]) for i in examined.tolist()},
                **{k: v for k, v in self.proof_stats.items() if k != "crown_seconds"}}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no image tensors)."""
        l0 = self.l0.float()
        return {
            "coverage": self.coverage_dict(),
            "tests": {"count": int(self.seed.numel()), "mean_l0": float(l0.mean()) if l0.numel() else None,
                      "max_l0": int(self.l0.max()) if l0.numel() else None, "adversarial": self.adversarial},
            "levels": [{"t": r.t, "mode": r.mode, "evaluations": r.evaluations, "covered": r.covered,
                        "seconds": round(r.seconds, 3)} for r in self.levels],
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
        }
