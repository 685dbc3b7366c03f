"""Command-line options whose values are CurveZMQ keys: kept together with their option."""

from __future__ import annotations


def attach_key_values(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``--option VALUE`` as ``--option=VALUE`` for key options: a Z85 key may begin with '-', which
    argparse would otherwise take for an option."""
    joined: list[str] = []
    values = iter(argv)
    for arg in values:
        value = next(values, None) if arg in options else None
        joined.append(arg if value is None else f"{arg}={value}")
    return joined
