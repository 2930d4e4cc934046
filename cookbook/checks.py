"""Argument checks shared by every layer: errors that name the bad value and what is valid."""

from __future__ import annotations

__all__ = ["positive_int"]


def positive_int(name: str, value) -> int:
    """`value` if it is an int >= 1 (not a bool), else a ValueError naming `name` and the value."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value
