"""Applications built on the engine (the paper's case studies): minimal-L0 attacks
(:mod:`.attack`), saliency maps (:mod:`.saliency`), anytime global robustness (:mod:`.study`, case study 1),
architecture comparison (:mod:`.compare`, case study 4); coverage-driven test generation and local robustness of
large models plug in here as sibling modules (see docs/architecture.md)."""

from .attack import AttackResult, attack
from .compare import CompareResult, compare
from .saliency import SaliencyResult, saliency
from .study import StudyResult, study_global

__all__ = ["AttackResult", "CompareResult", "SaliencyResult", "StudyResult", "attack", "compare", "saliency",
           "study_global"]
