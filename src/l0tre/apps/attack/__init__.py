"""Competitive minimal-L0 adversarial attack (paper Case Study 2, improved): :func:`attack`."""

from .core import SCREENS, attack
from .result import AttackResult

__all__ = ["SCREENS", "AttackResult", "attack"]
