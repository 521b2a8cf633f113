"""The result of :func:`l0tre.attack`: per-input tensors plus run-wide numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["AttackResult"]


@dataclass(repr=False)
class AttackResult:
    """Adversarial examples of minimal L0 found by :func:`l0tre.attack`.

    Per-input tensors have ``N`` rows, in the order of the inputs given; all live on the CPU.

    Attributes:
        x_adv: ``(N, C, H, W)`` adversarial examples in the caller's dtype; the original input
            where the attack failed (unchanged pixels hold their exact original values). Also
            readable as :attr:`adversarial`, the name :class:`l0tre.Result` uses.
        success: ``(N,)`` bool: ``x_adv`` was re-verified on the model in a separate forward
            pass (``argmax f(x_adv) != predicted``), changes ``1 <= l0 <= max_pixels`` pixels,
            and the input was not flagged ``misclassified``.
        l0: ``(N,)`` int64: changed *positions* ``(h, w)`` of ``x_adv`` (a pixel counts once
            however many of its channels changed); ``0`` where ``success`` is false.
        found_l0: ``(N,)`` int64: positions changed by the best example found, even where it
            exceeds ``max_pixels`` (``0`` where none was found).
        predicted: ``(N,)`` int64: the model's label of each original input (the reference).
        adversarial_label: ``(N,)`` int64: the model's label of ``x_adv`` (``-1`` where failed).
        misclassified: ``(N,)`` bool: ``labels`` were given and ``predicted != labels``; such
            inputs are not attacked (``success`` false, ``l0`` 0).
        labels: ``(N,)`` int64 true labels, or ``None``.
        evaluations: model rows evaluated in forward passes, in total (the search is batched
            across inputs; divide by the attacked inputs for a per-input mean), in either precision.
        gradients: forward+backward rows (gradients of the margin), in total.
        seconds: total wall-clock seconds of the call.
        epsilon: the value grid step; features: ``"pixel"`` or ``"element"``.
        max_pixels: the L0 budget (``None``: unlimited).
        stopped: ``"done"`` or ``"time_budget"`` (the budget cut the search short).
        config: the search settings used (plain values, for reports).
        low_precision_evaluations: how many of ``evaluations`` ran on the bfloat16 copy of the
            model (``precision="bfloat16"``; 0 in full precision).
        researched: inputs whose low-precision example did not verify in full precision and
            were searched again in full precision.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    l0: torch.Tensor
    found_l0: torch.Tensor
    predicted: torch.Tensor
    adversarial_label: torch.Tensor
    misclassified: torch.Tensor
    labels: torch.Tensor | None
    evaluations: int
    gradients: int
    seconds: float
    epsilon: float
    features: str
    max_pixels: int | None
    stopped: str = "done"
    config: dict[str, Any] = field(default_factory=dict)
    low_precision_evaluations: int = 0
    researched: int = 0

    @property
    def adversarial(self) -> torch.Tensor:
        """Alias of :attr:`x_adv` (read-only; the name :class:`l0tre.Result` uses): ``(N, C, H, W)``."""
        return self.x_adv

    def __repr__(self) -> str:
        s = self.summary()
        mean = "nan" if math.isnan(s["mean_l0"]) else f"{s['mean_l0']:.3f}"
        budget = "" if self.max_pixels is None else f", max_pixels={self.max_pixels}"
        return (f"AttackResult(inputs={s['inputs']}, attacked={s['attacked']}, successes={s['successes']}, "
                f"mean_l0={mean}{budget}, evaluations={self.evaluations}, seconds={self.seconds:.3f}, "
                f"stopped={self.stopped!r})")

    @property
    def n_inputs(self) -> int:
        return int(self.success.numel())

    @property
    def seconds_per_input(self) -> float:
        """Wall-clock seconds per input (the run is batched, so this is total / ``N``)."""
        return self.seconds / max(1, self.n_inputs)

    @property
    def attacked(self) -> torch.Tensor:
        """``(N,)`` bool: inputs that were attacked (not flagged ``misclassified``)."""
        return ~self.misclassified

    def summary(self) -> dict[str, Any]:
        """Run-wide numbers over the attacked inputs (L0 statistics over the successful ones)."""
        attacked = self.attacked
        n_att = int(attacked.sum())
        ok = self.success & attacked
        l0 = self.l0[ok].double()
        n_ok = int(ok.sum())
        nan = float("nan")
        return {
            "inputs": self.n_inputs,
            "attacked": n_att,
            "misclassified": int(self.misclassified.sum()),
            "successes": n_ok,
            "success_rate": (n_ok / n_att) if n_att else nan,
            "mean_l0": float(l0.mean()) if n_ok else nan,
            "median_l0": float(l0.median()) if n_ok else nan,
            "std_l0": float(l0.std(unbiased=False)) if n_ok else nan,
            "seconds": self.seconds,
            "seconds_per_image": self.seconds_per_input,
            "evaluations": self.evaluations,
            "gradients": self.gradients,
            "low_precision_evaluations": self.low_precision_evaluations,
            "researched": self.researched,
            "stopped": self.stopped,
        }

    def to_dict(self, include_adversarial: bool = False) -> dict[str, Any]:
        """JSON-serialisable dict: ``config``, ``global`` (see :meth:`summary`) and ``inputs`` rows.

        NaN statistics (no success) become ``None``.
        """
        rows = []
        for i in range(self.n_inputs):
            ok = bool(self.success[i])
            rows.append({
                "index": i,
                "label": None if self.labels is None else int(self.labels[i]),
                "predicted": int(self.predicted[i]),
                "misclassified": bool(self.misclassified[i]),
                "success": ok,
                "l0": int(self.l0[i]),
                "found_l0": int(self.found_l0[i]),
                "adversarial_label": int(self.adversarial_label[i]) if ok else None,
            })
        summary = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.summary().items()}
        out: dict[str, Any] = {
            "config": {"epsilon": self.epsilon, "features": self.features, "max_pixels": self.max_pixels,
                       **self.config},
            "global": summary,
            "inputs": rows,
        }
        if include_adversarial:
            out["x_adv"] = self.x_adv.tolist()
        return out
