"""The boundary checks: values accepted, and messages that name the argument, what was expected
and what was given."""

from __future__ import annotations

import math

import pytest

from l0tre.validate import Choice, non_negative_int, optional_int, positive_float, positive_int, positive_seconds


class Colour(Choice):
    RED = "red"
    BLUE = "blue"

    @classmethod
    def aliases(cls) -> dict[object, Colour]:
        return {"crimson": cls.RED, True: cls.BLUE}


def test_choice_parses_members_values_and_aliases() -> None:
    assert Colour.parse(Colour.RED) is Colour.RED
    assert Colour.parse("BLUE") is Colour.BLUE and Colour.parse("Crimson") is Colour.RED
    assert Colour.parse(True) is Colour.BLUE
    for bad in ("green", 1, False, None, 2.0):  # 1 == True but is no alias: identity, not equality
        with pytest.raises(ValueError, match=r"^colour: expected one of 'red', 'blue' \(or True\), got "):
            Colour.parse(bad)


@pytest.mark.parametrize("fn,good,bad_value,msg", [
    (positive_int, [1, 7], [0, -3], "a positive integer"),
    (non_negative_int, [0, 5], [-1], "an integer >= 0"),
])
def test_integers(fn: object, good: list[int], bad_value: list[int], msg: str) -> None:
    for v in good:
        assert fn("k", v) == v  # type: ignore[operator]
    for v in bad_value:
        with pytest.raises(ValueError, match=f"^k: expected {msg}, got {v}$"):
            fn("k", v)  # type: ignore[operator]
    for v in (True, 1.0, "3"):
        with pytest.raises(TypeError, match=f"^k: expected {msg}, got {type(v).__name__} "):
            fn("k", v)  # type: ignore[operator]


def test_optional_int() -> None:
    assert optional_int("k", None) is None and optional_int("k", 0, minimum=0) == 0
    with pytest.raises(ValueError, match=r"^k: expected an integer >= 2, got 1$"):
        optional_int("k", 1, minimum=2)
    with pytest.raises(TypeError, match=r"^k: expected an integer >= 1 or None, got bool True$"):
        optional_int("k", True)


def test_floats_and_seconds() -> None:
    assert positive_float("f", 2) == 2.0 and isinstance(positive_float("f", 2), float)
    for v in (0, -1.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="^f: expected a positive finite number"):
            positive_float("f", v)
    with pytest.raises(TypeError, match="^f: expected a positive number, got bool"):
        positive_float("f", True)
    assert positive_seconds("s", None) is None and positive_seconds("s", 1) == 1.0
    for v in (0, math.inf, True, "1"):
        with pytest.raises(ValueError, match="^s: expected a positive number of seconds or None"):
            positive_seconds("s", v)
