"""Encoded zarr chunks kept in the server's memory: each chunk fetched and encoded once however many
clients ask for it at the same time, and recent ones answered again without the cache server or encoding.

Keys carry the lane, source, chunk index and the ETag (data, classifier and thresholding), so a chunk of
another classifier is never answered. Everything runs on the server's event loop: no locks.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable


class ChunkMemory:
    """At most ``max_bytes`` of encoded chunks, least recently used dropped first; shared in-flight encodings."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.size = 0
        self._bytes: OrderedDict[Hashable, bytes] = OrderedDict()
        self._pending: dict[Hashable, tuple[asyncio.Task, list[int]]] = {}

    async def get(self, key: Hashable, produce: Callable[[], Awaitable[bytes]]) -> bytes:
        """The chunk's bytes: remembered, being produced for another client, or produced now."""
        if key in self._bytes:
            self._bytes.move_to_end(key)
            return self._bytes[key]
        if key not in self._pending:
            task = asyncio.ensure_future(produce())
            self._pending[key] = (task, [0])
            task.add_done_callback(lambda done: self._finished(key, done))
        task, waiting = self._pending[key]
        waiting[0] += 1
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done() and waiting[0] == 1:  # the last client waiting for it went away
                task.cancel()
            raise
        finally:
            waiting[0] -= 1

    def producing(self, key: Hashable) -> bool:
        """True while the chunk under ``key`` is being produced."""
        return key in self._pending

    def _finished(self, key: Hashable, task: asyncio.Task) -> None:
        self._pending.pop(key, None)
        if task.cancelled() or task.exception() is not None:
            return  # failures are never remembered
        body = task.result()
        if len(body) > self.max_bytes:
            return
        self._bytes[key] = body
        self.size += len(body)
        while self.size > self.max_bytes:
            _, dropped = self._bytes.popitem(last=False)
            self.size -= len(dropped)
