"""Saliency maps and single-pixel flips from the engine's level-1 pass (paper case study 5):
:func:`saliency`.

Modules: :mod:`.core` (the entry point), :mod:`.recorder` (the level-1 table at the executor
seam), :mod:`.settings` (options), :mod:`.result` (:class:`SaliencyResult`).
"""

from .core import saliency
from .result import SaliencyResult
from .settings import ScoreKind

__all__ = ["SaliencyResult", "ScoreKind", "saliency"]
