"""Argument checks shared by the algorithms: ValueError/TypeError naming the argument."""

from __future__ import annotations

import math
import numbers

from ..ops import _checks


def number(x, name: str) -> float:
    value = _checks.real(x, name)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def open_unit(x, name: str) -> float:
    """A number in the open interval (0, 1)."""
    value = number(x, name)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")
    return value


def positive(x, name: str) -> float:
    value = number(x, name)
    if not value > 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def non_negative(x, name: str) -> float:
    value = number(x, name)
    if not value >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def count(x, name: str, minimum: int = 0) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    if int(x) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {x}")
    return int(x)


def choice(x, name: str, options: tuple[str, ...]) -> str:
    if x not in options:
        raise ValueError(f"{name} must be one of {options}, got {x!r}")
    return x
