"""Checks of untrusted values (from the wire, a project file, a shared cache) before they are used."""

from __future__ import annotations


def whole_number(value, low: int = -(1 << 53), high: int = 1 << 53) -> int:
    """``value`` if it is an integer (not a bool or float) within [low, high]; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"expected a whole number in [{low}, {high}], got {str(value)[:40]!r}")
    return value


def decimal(text: str, high: int) -> int | None:
    """``text`` as a number from 0 to ``high`` if it is plain ASCII digits (not "²", not 5,000 of them); else None."""
    if not (0 < len(text) <= 18 and text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= high else None
