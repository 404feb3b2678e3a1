"""Checks shared by the configuration dataclasses."""

from __future__ import annotations

import math
import numbers
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
