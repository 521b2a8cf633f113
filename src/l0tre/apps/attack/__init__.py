"""Competitive minimal-L0 adversarial attack (paper Case Study 2, improved): :func:`attack`.

Modules: :mod:`.core` (the entry point and verification), :mod:`.settings` (screen, effort
presets, validation), :mod:`.shards` (the pipeline per shard), :mod:`.searcher` (a shard's state
and model access), :mod:`.screening`, :mod:`.additions`, :mod:`.paths`, :mod:`.relax` and
:mod:`.moves` (the search steps), :mod:`.result` (:class:`AttackResult`).
"""

from .core import attack
from .result import AttackResult
from .settings import EFFORTS, SCREENS, Effort, Screen, SearchPreset

__all__ = ["EFFORTS", "SCREENS", "AttackResult", "Effort", "Screen", "SearchPreset", "attack"]
