"""Bounding methods and the options of one bound computation.

Methods (``method``) for the final specification:

* ``"ibp"``: interval bound propagation; the specification is folded into the last affine
  layers.
* ``"forward"``: forward-mode linear bounds in the box's free coordinates.
* ``"crown"``: backward linear relaxation (CROWN / DeepPoly) down to the input.
* ``"hybrid"``: ``"crown"`` through the fully connected head only (the nodes with flat
  per-sample shapes); where it reads the convolutional body, forward-mode bounds are
  substituted. Much cheaper on convolutional networks with L0 boxes, slightly looser; the
  same as ``"crown"`` for networks without spatial layers.
* ``"auto"`` (certification only): one of ``"crown"`` / ``"hybrid"`` per model, see
  :func:`auto_method`.

Intermediate (pre-activation) bounds (``intermediate``) are always intersected with IBP:
``"ibp"``, ``"forward"``, ``"crown"`` (backward CROWN on every *unstable* neuron, the
tightest and costliest) or ``"auto"`` (``"forward"`` when a box has at most
``forward_max_vars`` free coordinates, else ``"crown"``; ``"ibp"`` for ``method="ibp"``).
"""

from __future__ import annotations

from dataclasses import dataclass

from l0tre.certify import ops as O
from l0tre.certify.graph import Graph
from l0tre.validate import Choice

__all__ = ["LEVEL_METHODS", "METHODS", "BoundOptions", "Intermediate", "Method", "auto_method", "sweep_mode"]


class Method(Choice):
    """How the final specification is bounded (module docstring)."""

    AUTO = "auto"
    IBP = "ibp"
    FORWARD = "forward"
    CROWN = "crown"
    HYBRID = "hybrid"

    @classmethod
    def argument(cls) -> str:
        return "method"


class Intermediate(Choice):
    """How intermediate (pre-activation) bounds are computed (module docstring)."""

    AUTO = "auto"
    IBP = "ibp"
    FORWARD = "forward"
    CROWN = "crown"

    @classmethod
    def argument(cls) -> str:
        return "intermediate"


#: what a bound computation accepts (``"auto"`` is resolved per model before)
METHODS = tuple(m.value for m in Method if m is not Method.AUTO)
#: what certification (``certify_level``, the engine's ``certify_method``) accepts
LEVEL_METHODS = tuple(m.value for m in Method)


@dataclass(frozen=True)
class BoundOptions:
    """Settings of one bound computation (module docstring); ``method`` is never ``"auto"``.
    Certification builds these from :class:`~l0tre.certify.settings.CertifySettings`."""

    method: str = "crown"
    intermediate: str = "auto"
    forward_max_vars: int = 64
    max_memory: int = 1 << 30

    @property
    def backward_final(self) -> bool:
        """Whether the final specification is bounded by a backward pass."""
        return self.method in ("crown", "hybrid")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {self.method!r}")
        intermediates = tuple(m.value for m in Intermediate)
        if self.intermediate not in intermediates:
            raise ValueError(f"intermediate: expected one of {intermediates}, got {self.intermediate!r}")
        if self.max_memory <= 0:
            raise ValueError(f"max_memory: expected a positive number of bytes, got {self.max_memory}")
        # plain strings from here on (a Choice member compares and hashes like its value)
        object.__setattr__(self, "method", str(Method.parse(self.method).value))
        object.__setattr__(self, "intermediate", str(Intermediate.parse(self.intermediate).value))


def auto_method(graph: Graph) -> str:
    """``"crown"`` when the fully connected part of ``graph`` has no ReLU / max-pool (its only
    dense layers follow the last non-linearity, as in the paper's sDNN), else ``"hybrid"``.

    Measured: on conv + linear models hybrid is close to forward-mode bounds and CROWN proves
    far more per second (14×14 sDNN, t = 2: 6.0 vs 9.9 s per image; 28×28 sDNN close pixel pairs:
    99.4 % vs 77 % proven at once at 92 vs 118 pairs/s); with a dense hidden layer hybrid is
    as tight for half the price (paper-mnist single pixels: 33.0 % vs 33.4 % at 294 vs 142/s).
    """
    flat_nonlinear = any(isinstance(n.op, (O.ReluOp, O.MaxPoolOp)) and len(n.shape) == 1 for n in graph.nodes)
    return "hybrid" if flat_nonlinear else "crown"


def sweep_mode(opts: BoundOptions, n_free: int) -> str:
    """How the forward sweep bounds intermediate nodes for boxes with ``n_free`` free
    coordinates: ``"ibp"``, ``"forward"`` or ``"crown"``."""
    if opts.intermediate != "auto":
        return opts.intermediate
    if opts.method in ("ibp", "forward"):
        return opts.method
    if opts.method == "hybrid":
        return "forward"
    return "forward" if n_free <= opts.forward_max_vars else "crown"
