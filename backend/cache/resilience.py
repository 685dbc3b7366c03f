"""Redis calls that ride out outages: the cache is an accelerator, not a single point of failure.

Transient failures (connection refused or reset, time-outs, a server still loading) are retried with
back-off for a bounded time. Writes a server refuses (``OOM command not allowed`` at ``maxmemory``
with ``noeviction``, a read-only replica) are skipped with one warning: blocks are then computed and
delivered without being cached. Nothing is retried once the owner is shutting down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from backend.backoff import Backoff
from backend.config import CacheConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


def refuses_writes(error: Exception) -> bool:
    """True for a server that is up but will not store anything (out of memory, read-only)."""
    text = str(error)
    return isinstance(error, redis.ResponseError) and (
        isinstance(error, (redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError))
        or text.startswith(("OOM", "READONLY")) or "OOM command not allowed" in text)


class Resilient:
    """Wraps Redis calls with the configuration's retries and the handling of refused writes.

    redis-py's own ``Retry`` counts attempts per call; here a call is retried for a time window, and the
    retrying stops at once when the owner shuts down, which ``Retry`` cannot be told."""

    def __init__(self, config: CacheConfig = CacheConfig()):
        self.config = config
        self.closing = threading.Event()  # set: fail at once instead of retrying
        self._warned_writes = False
        self._outage_logged = False

    def call(self, action: Callable[[], T], retry: bool = True) -> T:
        """``action()``, retried on transient errors for up to the configuration's window."""
        deadline = time.monotonic() + self.config.retry_window_s
        backoff = Backoff(self.config.retry_first_delay_s, self.config.retry_max_delay_s)
        while True:
            try:
                result = action()
                self._outage_logged = False
                return result
            except TRANSIENT as exc:
                pause = backoff.next()
                if not retry or self.closing.is_set() or time.monotonic() + pause > deadline:
                    raise
                if not self._outage_logged:
                    log.warning("the cache server does not answer (%s); retrying for up to %.0f s", exc,
                                self.config.retry_window_s)
                    self._outage_logged = True
                self.closing.wait(pause)

    def write(self, action: Callable[[], T], refused: T, retry: bool = True) -> T:
        """Like :meth:`call`, but a server that refuses writes gives ``refused`` (with one warning)."""
        try:
            return self.call(action, retry)
        except redis.ResponseError as exc:
            if not refuses_writes(exc):
                raise
            if not self._warned_writes:
                log.warning("the cache server refuses writes (%s); blocks are computed and delivered without "
                            "being cached", str(exc)[:200])
                self._warned_writes = True
            return refused
