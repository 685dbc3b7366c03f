"""Words for counts in messages: "1 process", "2 processes"."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun``, in the plural unless ``count`` is 1: ``plural`` if given, else the noun with
    "es" after s, x, ch or sh ("processes") and "s" after anything else ("blocks")."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {plural or noun + ('es' if noun.endswith(('s', 'x', 'ch', 'sh')) else 's')}"
