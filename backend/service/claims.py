"""The cache side of a gateway's blocks: look up, claim, wait for another owner, renew, take over.

A block is served from the cache when it is there (a value of the wrong shape or type is dropped); a
missing one is claimed, so no other request, here or in another process, computes it too; if someone
else holds the claim we wait for the cache's completion notice. The watchdog (:meth:`Claims.check`,
every third of a lease) renews our claims and takes over blocks whose owner went silent. Losing the
notice channel makes every waiting block look again once it is back.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

import numpy as np
import redis

from backend.errors import UserError, is_deterministic
from backend.service.block_state import BlockState, BlockTable
from backend.service.gateway_status import Counters

log = logging.getLogger(__name__)


class CacheUnavailable(UserError):
    """The cache server cannot be reached."""


Finish = Callable[..., None]  # finish(state, values=None, error=None)


class Claims:
    """Claims, leases and notices of one gateway's blocks (``cache``: a BlockCache or a fake of it)."""

    def __init__(self, cache, table: BlockTable, counters: Counters, compute: Callable[[BlockState], None],
                 finish: Finish, on_cache_lost: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.cache, self.table, self.counters = cache, table, counters
        self.compute, self.finish, self.on_cache_lost, self.clock = compute, finish, on_cache_lost, clock
        self.interval = cache.config.lease_s / 3
        self._stop = threading.Event()
        self._listener = cache.listen(self._on_notice, self._on_lost, self._on_back)
        if not self._listener.subscribed.wait(cache.config.subscribe_timeout_s):
            self._listener.stop()
            raise CacheUnavailable("the cache server does not answer")
        self._watchdog = threading.Thread(target=self._watch, name="gateway-watchdog", daemon=True)
        self._watchdog.start()

    def look_up(self, state: BlockState) -> None:
        """Serve ``state`` from the cache, or claim and compute it, or wait for its owner's notice."""
        started = time.perf_counter()
        try:
            self._serve(state)
        finally:
            self.counters.add("gateway_s", time.perf_counter() - started)

    def _serve(self, state: BlockState) -> None:
        try:
            if self._served_from_cache(state):
                return
            token = uuid.uuid4().hex
            if self.cache.claim(state.key, token):
                self.counters.add("misses")
                state.token = token
                self.compute(state)
            elif not self._served_from_cache(state):  # it may have finished or failed since we looked
                self.counters.add("waited")
        except redis.RedisError as exc:
            self.give_up(state, CacheUnavailable(f"the cache server is unavailable ({exc})"))
        except Exception as exc:  # e.g. the raw data could not be read: nobody may wait for this block forever
            log.debug("block %s failed before it reached a worker: %s", state.key, exc)  # its waiters report it
            self.give_up(state, exc)

    def _served_from_cache(self, state: BlockState) -> bool:
        """Finish the block from its cached values or recorded error, if either is there."""
        values = self.cache.get(state.key)
        if values is not None and (values.shape, values.dtype) != state.expected:
            log.warning("dropping cache entry %s: %s %s instead of %s %s", state.key, values.shape, values.dtype,
                        *state.expected)
            self.cache.discard(state.key)
            values = None
        if values is not None:
            self.counters.add("hits")
            self.finish(state, values=values)
            return True
        message = self.cache.error(state.key)
        if message is not None:
            self.finish(state, error=RuntimeError(message))
            return True
        return False

    def give_up(self, state: BlockState, error: Exception) -> None:
        """Fail the block's waiters; record a deterministic error for everyone, else just free our claim."""
        token, state.token = state.token, None
        self.finish(state, error=error)
        if token is None:
            return
        try:
            if is_deterministic(error):
                self.cache.fail(state.key, f"{type(error).__name__}: {error}")
            else:
                self.cache.abandon(state.key, token)  # others waiting elsewhere look again and may claim it
        except redis.RedisError as exc:
            log.warning("could not release block %s: %s (its lease expires by itself)", state.key, exc)

    def store(self, state: BlockState, values: np.ndarray) -> None:
        """Put a block we computed into the cache (its claim goes, everyone waiting hears of it)."""
        try:
            self.cache.complete(state.key, values)
        except redis.RedisError as exc:
            log.warning("could not store block %s: %s", state.key, exc)

    def release(self, states: list[BlockState]) -> None:
        """Give up the claims of ``states`` without results, at once (closing: never wait for a dead cache)."""
        for state in states:
            if state.token:
                try:
                    self.cache.release(state.key, state.token, retry=False)
                except redis.RedisError:
                    pass  # its lease expires by itself

    # -- notices and the watchdog ------------------------------------------------------------------------
    def _on_notice(self, key: str) -> None:
        state = self.table.get(key)
        if state is not None and state.token is None:
            self.look_up(state)

    def _on_lost(self, exc: Exception) -> None:
        """The notice subscription broke: restart an embedded server; waiters wait (calls retry)."""
        log.warning("lost the cache server's notices (%s); waiting for it to come back", exc)
        if self.on_cache_lost is not None:
            self.on_cache_lost()

    def _on_back(self) -> None:
        """Subscribed again: notices sent meanwhile were lost, so every waiting block looks again."""
        for state in self.table.states(owned=False):
            self.look_up(state)

    def _cache_gone(self, exc: Exception) -> None:
        """The cache stayed unreachable beyond the retry window: fail what waits for other owners."""
        for state in self.table.states(owned=False):
            self.finish(state, error=CacheUnavailable(f"the cache server is unavailable ({exc})"))

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def check(self) -> None:
        """Renew our claims; take over blocks we wait for whose owner has let its lease lapse."""
        try:
            for state in self.table.states():
                if state.token:
                    self.cache.renew(state.key, state.token)
                elif self.clock() - state.since > self.interval and not self.cache.leased(state.key):
                    self.look_up(state)  # the owner died or gave up: take over
        except redis.RedisError as exc:
            self._cache_gone(exc)
        except Exception:  # never let one bad block stop the renewal of all the others
            log.exception("gateway watchdog: unexpected error (going on)")

    def stop(self) -> None:
        """Stop the watchdog and the notice listener."""
        self._stop.set()
        self._watchdog.join(timeout=5)
        self._listener.stop()
