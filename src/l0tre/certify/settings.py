"""Certification settings: one frozen, validated value passed down every certification call.

Every entry point (:func:`~l0tre.certify.certify_boxes`, :func:`~l0tre.certify.certify_subsets`,
:func:`~l0tre.certify.certify_boxes_bab`, :func:`~l0tre.certify.certify_level`,
:func:`~l0tre.certify.bound_model`) takes ``settings=`` and, for convenience, the same names
as keywords (``method="ibp", time_limit=30``), which are applied on top of ``settings`` (or of
the entry point's defaults) by :meth:`CertifySettings.build`; the value is validated once,
in ``__post_init__``, and the internal routes receive it whole.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from l0tre.certify.graph import Graph
from l0tre.certify.methods import BoundOptions, Intermediate, Method, auto_method
from l0tre.validate import Choice, optional_int, positive_float, positive_int

__all__ = ["LEVEL_SETTINGS", "CertifySettings", "Split"]


class Split(Choice):
    """How branch and bound bisects a box: the ``"widest"`` free coordinate (ties broken by
    the margin's gradient) or the largest ``width · |gradient|`` (``"smear"``)."""

    WIDEST = "widest"
    SMEAR = "smear"

    @classmethod
    def argument(cls) -> str:
        return "split"


#: keywords of earlier versions → field names
_ALIASES = {"bab_max_depth": "max_depth", "bab_max_nodes": "max_nodes"}


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return value


def _finite(name: str, value: object, minimum: float = -math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a finite number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    if value < minimum:
        raise ValueError(f"{name}: expected a number >= {minimum}, got {value}")
    return float(value)


def _count(name: str, value: object) -> int:
    """An int ≥ 0 (bools refused)."""
    checked = optional_int(name, value, minimum=0)
    if checked is None:
        raise TypeError(f"{name}: expected an integer >= 0, got None")
    return checked


@dataclass(frozen=True)
class CertifySettings:
    """How certification bounds, branches and spends its budget.

    Bounds:
        method: :class:`~l0tre.certify.methods.Method` (``"auto"`` picks per model, see
            :func:`~l0tre.certify.methods.auto_method`); intermediate:
            :class:`~l0tre.certify.methods.Intermediate`.
        dtype: floating type of the bound computation (float64 by default: a safety margin
            against rounding); batch_size: boxes per bound pass; max_memory: bytes per pass.
        margin_tol: a box is proven when every margin lower bound exceeds this.
    Budget:
        time_limit: seconds per call (per input and level for ``certify_level``).
    Branch and bound:
        use_bab: run it on the single subsets no covering box proves (``certify_level``; else
            they are only searched for counterexamples); max_depth, max_nodes: its budgets;
        split: :class:`Split`; attack_steps / child_attack_steps: gradient steps of the
            counterexample search in each box / each unproven piece; seed: of that search.
    Level covering (``certify_level``):
        block: side of the initial pixel patches (``None``: 2 for ``t ≤ 2``, else 1);
        jump: a failed block whose worst margin bound is below ``-jump`` times the clean margin
            goes straight to its single subsets (``0`` disables this); max_boxes: covering boxes;
        separable: use the separable routes at ``t = 2, 3`` (:mod:`l0tre.certify.separable`,
            :mod:`l0tre.certify.triples`) where they apply.
    """

    method: Method = Method.CROWN
    intermediate: Intermediate = Intermediate.AUTO
    dtype: torch.dtype = torch.float64
    batch_size: int = 256
    max_memory: int = 1 << 30
    margin_tol: float = 1e-6
    time_limit: float = 60.0
    use_bab: bool = True
    max_depth: int = 16
    max_nodes: int = 20_000
    split: Split = Split.WIDEST
    attack_steps: int = 10
    child_attack_steps: int = 0
    seed: int = 0
    block: int | None = None
    jump: float = 2.0
    max_boxes: int = 200_000
    separable: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating torch.dtype, got {self.dtype!r}")
        checked: dict[str, object] = {
            "method": Method.parse(self.method),
            "intermediate": Intermediate.parse(self.intermediate),
            "batch_size": positive_int("batch_size", self.batch_size),
            "max_memory": positive_int("max_memory", self.max_memory),
            "margin_tol": _finite("margin_tol", self.margin_tol),
            "time_limit": positive_float("time_limit", self.time_limit),
            "use_bab": _flag("use_bab", self.use_bab),
            "max_depth": _count("max_depth", self.max_depth),
            "max_nodes": positive_int("max_nodes", self.max_nodes),
            "split": Split.parse(self.split),
            "attack_steps": _count("attack_steps", self.attack_steps),
            "child_attack_steps": _count("child_attack_steps", self.child_attack_steps),
            "seed": _count("seed", self.seed),
            "block": optional_int("block", self.block),
            "jump": _finite("jump", self.jump, minimum=0.0),
            "max_boxes": positive_int("max_boxes", self.max_boxes),
            "separable": _flag("separable", self.separable),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def build(cls, base: CertifySettings | None = None, /, **options: Any) -> CertifySettings:
        """``base`` (default: ``CertifySettings()``) with the fields named in ``options``
        changed (``bab_max_depth`` / ``bab_max_nodes`` are accepted for ``max_depth`` /
        ``max_nodes``); validated."""
        names = {f.name for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for key, value in options.items():
            name = _ALIASES.get(key, key)
            if name not in names:
                raise TypeError(f"unexpected certification setting {key!r}; known: {', '.join(sorted(names))}")
            changes[name] = value
        return dataclasses.replace(base if base is not None else cls(), **changes)

    def method_for(self, graph: Graph) -> str:
        """The bounding method used on ``graph`` (``"auto"`` resolved)."""
        return auto_method(graph) if self.method is Method.AUTO else str(self.method.value)

    def bound_options(self, graph: Graph) -> BoundOptions:
        """The options of one bound computation on ``graph``."""
        return BoundOptions(method=self.method_for(graph), intermediate=str(self.intermediate.value),
                            max_memory=self.max_memory)


#: the defaults of :func:`l0tre.certify.certify_level` (and of the engine's certification)
LEVEL_SETTINGS = CertifySettings(method=Method.HYBRID, time_limit=300.0, max_depth=12)
