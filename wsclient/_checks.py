"""Small checks of values, and bounded reprs of values from the wire, shared by the modules."""

from __future__ import annotations

import math
import numbers
import reprlib
from typing import TypeGuard

__all__: list[str] = []


def is_finite_number(value: object) -> bool:
    """True for a real number (not a bool) that a float can hold and that is finite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too big for a float
        return False


def is_count(value: object) -> TypeGuard[int]:
    """True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_timeout(value: object, name: str = "timeout") -> float:
    """``value`` as seconds to wait: a positive number, ``math.inf`` allowed; else ValueError."""
    if isinstance(value, (int, float)) and (is_finite_number(value) or value == math.inf):
        seconds = float(value)
        if seconds > 0:
            return seconds
    raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


def cut(text: str, limit: int) -> str:
    """``text``, or its start and ``...`` in ``limit`` characters if it is longer."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def wire_repr(piece: int) -> reprlib.Repr:
    """A bounded ``repr`` for values from the wire: three levels deep, each string or
    other value cut at ``piece`` characters, so a deep or huge value cannot blow up."""
    bounded = reprlib.Repr()
    bounded.maxlevel = 3
    bounded.maxstring = bounded.maxother = piece
    return bounded


def short_repr(value: object, bounded: reprlib.Repr, limit: int) -> str:
    """``bounded.repr(value)`` cut to ``limit`` characters; the type's name for a
    value it cannot show (an int too long to print, a hostile object)."""
    try:
        text = bounded.repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return cut(text, limit)
