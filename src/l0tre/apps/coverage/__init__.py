"""Coverage-driven test generation (paper Case Study 3): :func:`coverage`.

Modules: :mod:`.neurons` (which neurons count, their values), :mod:`.candidates` (tests as a
seed plus changed pixels), :mod:`.search` (the level-by-level search), :mod:`.core` (the entry
point and the unreachability proofs), :mod:`.result` (:class:`CoverageResult`),
:mod:`.outputs` (the output folder) and :mod:`.figures` (its PNG figures).
"""

from .core import coverage, unreachable_neurons
from .neurons import Layer, NeuronKind, Neurons
from .result import CoverageResult

__all__ = ["CoverageResult", "Layer", "NeuronKind", "Neurons", "coverage", "unreachable_neurons"]
