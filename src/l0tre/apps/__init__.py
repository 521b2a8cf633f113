"""Applications built on the engine (the paper's case studies): minimal-L0 attacks
(:mod:`.attack`), saliency maps (:mod:`.saliency`), anytime global robustness (:mod:`.study`, case study 1),
architecture comparison (:mod:`.compare`, case study 4), coverage-driven test generation (:mod:`.coverage`, case
study 3); local robustness of large models plugs in here as a sibling module (see docs/architecture.md)."""

from .attack import AttackResult, attack
from .compare import CompareResult, compare
from .coverage import CoverageResult, coverage
from .saliency import SaliencyResult, saliency
from .study import StudyResult, study_global

__all__ = ["AttackResult", "CompareResult", "CoverageResult", "SaliencyResult", "StudyResult", "attack", "compare",
           "coverage", "saliency", "study_global"]
