"""The memory the web service's answers may hold together while they are assembled.

Each request holds what it needs (a chunk, or the slabs of a region in flight) for as long as it assembles
and sends it; a request that does not fit waits for room, and after ``wait_s`` fails with :class:`Busy`
(HTTP 503 with Retry-After). A request larger than the whole budget runs alone. Everything runs on the
server's event loop: no locks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from backend.errors import UserError


class Busy(UserError):
    """No room in the memory budget in time (HTTP 503, Retry-After)."""


class Budget:
    """At most ``total`` bytes held at once."""

    def __init__(self, total: int, wait_s: float):
        self.total, self.wait_s = total, wait_s
        self.used = 0
        self.refused = 0
        self._changed: asyncio.Condition | None = None

    @asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[int]:
        """Hold ``nbytes`` (at most the whole budget) inside the block; Busy if there is no room in time."""
        amount = min(max(int(nbytes), 0), self.total)
        changed = self._changed = self._changed or asyncio.Condition()
        async with changed:
            try:
                if self.used + amount > self.total:
                    await asyncio.wait_for(changed.wait_for(lambda: self.used + amount <= self.total), self.wait_s)
            except TimeoutError:
                self.refused += 1
                raise Busy(f"the server is busy: its answers hold {self.used / 1e6:.0f} of {self.total / 1e6:.0f} "
                           f"MB (memory_budget_mb); retry later") from None
            self.used += amount
        try:
            yield amount
        finally:
            async with changed:
                self.used -= amount
                changed.notify_all()
