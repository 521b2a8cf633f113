"""Case study 1 of the paper: anytime global robustness evaluation with the per-level record
behind Figs. 1–2 (:func:`study_global`).

Modules: :mod:`.core` (the run and :class:`StudyResult`), :mod:`.levels` (per-level records kept
from the engine's level-complete snapshots), :mod:`.figures` (the figures, matplotlib lazily),
:mod:`.output` (``results.json``, figures, ``index.html``), :mod:`.page` (the HTML page).
"""

from .core import StudyResult, levels_path, study_global
from .levels import LevelLog, LevelRecord, attribute_seconds
from .output import write_study

__all__ = ["LevelLog", "LevelRecord", "StudyResult", "attribute_seconds", "levels_path", "study_global",
           "write_study"]
