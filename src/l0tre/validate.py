"""Validation at the API boundary: one place for the checks every entry point makes.

Each helper returns the validated value or raises ``TypeError`` / ``ValueError`` with a message
that names the argument, what was expected and what was given. :class:`Choice` is the base of
the package's string enums (modes, kinds, presets): ``parse`` accepts a member, its value or an
alias.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import TypeVar

__all__ = ["Choice", "non_negative_int", "optional_int", "positive_float", "positive_int", "positive_seconds"]

C = TypeVar("C", bound="Choice")


class Choice(str, enum.Enum):
    """A string enum with a validating parser; subclasses name their argument."""

    @classmethod
    def argument(cls) -> str:
        """The argument name used in error messages."""
        return cls.__name__.lower()

    @classmethod
    def aliases(cls: type[C]) -> Mapping[object, C]:
        """Other accepted spellings (lower-case strings, or other values such as ``True``)."""
        return {}

    @classmethod
    def parse(cls: type[C], value: object) -> C:
        """The member for ``value``: a member, its value, or an alias (case-insensitive)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            for member in cls:
                if member.value == value.lower():
                    return member
            found = cls.aliases().get(value.lower())
            if found is not None:
                return found
        elif isinstance(value, bool) or value is None:
            for key, member in cls.aliases().items():
                if key is value:
                    return member
        expected = ", ".join(repr(m.value) for m in cls)
        others = [repr(k) for k in cls.aliases() if not isinstance(k, str)]
        if others:
            expected += f" (or {', '.join(others)})"
        raise ValueError(f"{cls.argument()}: expected one of {expected}, got {value!r}")


def _int_at_least(name: str, value: object, minimum: int, wanted: str, wanted_type: str | None = None) -> int:
    """``value`` as an int ≥ ``minimum`` (bools refused); messages say ``expected <wanted>``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected {wanted_type or wanted}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected {wanted}, got {value}")
    return value


def positive_int(name: str, value: object) -> int:
    """``value`` as an int ≥ 1 (bools refused)."""
    return _int_at_least(name, value, 1, "a positive integer")


def non_negative_int(name: str, value: object) -> int:
    """``value`` as an int ≥ 0 (bools refused)."""
    return _int_at_least(name, value, 0, "an integer >= 0")


def optional_int(name: str, value: object, minimum: int = 1) -> int | None:
    """``None``, or ``value`` as an int ≥ ``minimum``."""
    if value is None:
        return None
    return _int_at_least(name, value, minimum, f"an integer >= {minimum}", f"an integer >= {minimum} or None")


def positive_float(name: str, value: object) -> float:
    """``value`` as a finite float > 0 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a positive number, got {type(value).__name__} {value!r}")
    if not math.isfinite(float(value)) or value <= 0:
        raise ValueError(f"{name}: expected a positive finite number, got {value}")
    return float(value)


def positive_seconds(name: str, value: object) -> float | None:
    """``None``, or ``value`` as a finite number of seconds > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)) or value <= 0:
        raise ValueError(f"{name}: expected a positive number of seconds or None, got {value!r}")
    return float(value)
