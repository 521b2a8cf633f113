"""Applications built on the engine (the paper's case studies): minimal-L0 attacks
(:mod:`.attack`); coverage-driven test generation, saliency maps, architecture comparison and
local robustness of large models plug in here as sibling modules (see docs/architecture.md)."""

from .attack import AttackResult, attack

__all__ = ["AttackResult", "attack"]
