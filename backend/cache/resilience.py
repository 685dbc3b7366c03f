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
from dataclasses import dataclass
from typing import TypeVar

import redis

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


def refuses_writes(error: Exception) -> bool:
    """True for a server that is up but will not store anything (out of memory, read-only)."""
    text = str(error)
    return isinstance(error, redis.ResponseError) and (
        isinstance(error, (redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError))
        or text.startswith(("OOM", "READONLY")) or "OOM command not allowed" in text)


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying a cache server that does not answer."""

    window_s: float = 20.0
    first_delay_s: float = 0.1
    max_delay_s: float = 2.0


class Resilient:
    """Wraps Redis calls with :class:`RetryPolicy` and the handling of refused writes."""

    def __init__(self, policy: RetryPolicy = RetryPolicy()):
        self.policy = policy
        self.closing = threading.Event()  # set: fail at once instead of retrying
        self._warned_writes = False
        self._outage_logged = False

    def call(self, action: Callable[[], T], retry: bool = True) -> T:
        """``action()``, retried on transient errors for up to the policy's window."""
        deadline = time.monotonic() + self.policy.window_s
        delay = self.policy.first_delay_s
        while True:
            try:
                result = action()
                self._outage_logged = False
                return result
            except TRANSIENT as exc:
                if not retry or self.closing.is_set() or time.monotonic() + delay > deadline:
                    raise
                if not self._outage_logged:
                    log.warning("the cache server does not answer (%s); retrying for up to %.0f s", exc,
                                self.policy.window_s)
                    self._outage_logged = True
                self.closing.wait(delay)
                delay = min(delay * 2, self.policy.max_delay_s)

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
