"""Applications built on the engine (the paper's case studies): minimal-L0 attacks
(:mod:`.attack`), saliency maps (:mod:`.saliency`); coverage-driven test generation, architecture comparison and
local robustness of large models plug in here as sibling modules (see docs/architecture.md)."""

from .attack import AttackResult, attack
from .saliency import SaliencyResult, saliency

__all__ = ["AttackResult", "SaliencyResult", "attack", "saliency"]
