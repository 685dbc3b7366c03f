"""Growing pauses between retries: the one back-off of the project (reconnects, restarts, cache outages)."""

from __future__ import annotations


class Backoff:
    """Pauses that start at ``first_s`` and double up to ``max_s``; :meth:`reset` after a success."""

    def __init__(self, first_s: float, max_s: float, factor: float = 2.0):
        if not 0 < first_s <= max_s or factor < 1:
            raise ValueError(f"a back-off needs 0 < first ({first_s}) <= max ({max_s}) and factor >= 1")
        self.first_s, self.max_s, self.factor = first_s, max_s, factor
        self.current_s = first_s

    def next(self) -> float:
        """The pause to take now; the following one is longer (up to the maximum)."""
        pause = self.current_s
        self.current_s = min(self.current_s * self.factor, self.max_s)
        return pause

    def reset(self) -> None:
        """Start again from the first pause."""
        self.current_s = self.first_s
