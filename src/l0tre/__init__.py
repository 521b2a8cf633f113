"""l0tre: anytime, tensor-based L0 robustness evaluation with bounds you can trust."""

from .api import evaluate, evaluate_iter
from .apps.attack import AttackResult, attack
from .apps.compare import CompareResult, compare
from .apps.coverage import CoverageResult, coverage
from .apps.saliency import SaliencyResult, saliency
from .apps.study import StudyResult, study_global
from .atomic import OutputError
from .classifier import Classifier, OutputKind, Preprocessing, as_classifier
from .data import Dataset, EmbeddedDataWarning, load_data
from .engine.features import FeatureKind
from .models import list_models, load_model
from .objectives import Misclassification, Objective, ObjectiveValues
from .result import Result

__version__ = "0.1.0"

__all__ = [
    "AttackResult",
    "Classifier",
    "CompareResult",
    "CoverageResult",
    "Dataset",
    "EmbeddedDataWarning",
    "FeatureKind",
    "Misclassification",
    "Objective",
    "ObjectiveValues",
    "OutputError",
    "OutputKind",
    "Preprocessing",
    "Result",
    "StudyResult",
    "SaliencyResult",
    "as_classifier",
    "attack",
    "compare",
    "coverage",
    "evaluate",
    "evaluate_iter",
    "list_models",
    "load_data",
    "load_model",
    "study_global",
    "saliency",
]
