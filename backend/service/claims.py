"""The cache side of a gateway's blocks: look up, claim, wait for another owner, renew, take over.

A block is served from the cache when it is there (a value of the wrong shape or type is dropped); a
missing one is claimed, so no other request, here or in another process, computes it too; if someone
else holds the claim we wait for the cache's completion notice. Every third of a lease, one thread renews
all our leases in one call (:meth:`Claims.renew`; a lease found lost hands its block over to whoever holds
it now), and the watchdog (:meth:`Claims.check`, which may read raw data when it takes a block over) takes
over blocks whose owner went silent and fails blocks not delivered by their deadline. Losing the notice
channel makes every waiting block look again once it is back.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np
import redis

from backend.cache.block_cache import CACHED, CLAIMED
from backend.distributed.futures import TaskError
from backend.distributed.settling import after_settling
from backend.errors import TransientError, UserError, is_deterministic
from backend.service.block_state import BlockState, BlockTable
from backend.service.gateway_status import Counters

log = logging.getLogger(__name__)


class CacheUnavailable(UserError):
    """The cache server cannot be reached."""


class BlockOverdue(TransientError):
    """A block was not delivered by its deadline (``cache.block_deadline_s``)."""


Finish = Callable[..., None]  # finish(state, values=None, error=None)


class Claims:
    """Claims, leases and notices of one gateway's blocks (``cache``: a BlockCache or a fake of it)."""

    def __init__(self, cache, table: BlockTable, counters: Counters, compute: Callable[[BlockState], None],
                 finish: Finish, cancel: Callable[[Future], object], on_cache_lost: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.cache, self.table, self.counters = cache, table, counters
        self.compute, self.finish, self.cancel = compute, finish, cancel
        self.on_cache_lost, self.clock = on_cache_lost, clock
        self.interval = cache.config.lease_s / 3
        self.deadline_s = cache.config.block_deadline_s
        self.batch = cache.config.claim_batch
        self.read_batch_bytes = cache.config.batch_mb * 2**20
        self._token_prefix = uuid.uuid4().hex
        self._token_numbers = itertools.count()
        self._store_lock = threading.Lock()
        self._to_store: list[tuple[str, np.ndarray]] = []
        self._stop = threading.Event()
        self._listener = cache.listen(self._on_notice, self._on_lost, self._on_back)
        if not self._listener.subscribed.wait(cache.config.subscribe_timeout_s):
            self._listener.stop()
            raise CacheUnavailable("the cache server does not answer")
        self._threads = [threading.Thread(target=self._every_interval, args=(action,), name=name, daemon=True)
                         for action, name in ((self.renew, "gateway-leases"), (self.check, "gateway-watchdog"))]
        for thread in self._threads:
            thread.start()

    def look_up(self, state: BlockState) -> None:
        """Serve ``state`` from the cache, or claim and compute it, or wait for its owner's notice."""
        started = time.perf_counter()
        try:
            self._serve(state)
        finally:
            self.counters.add("gateway_s", time.perf_counter() - started)

    def look_up_many(self, states: list[BlockState]) -> None:
        """:meth:`look_up` for many blocks: one call to the cache server claims (or finds cached) a batch of
        them, and the cached ones are read in a few round trips; anything else goes the way of one block."""
        started = time.perf_counter()
        try:
            for first in range(0, len(states), self.batch):
                self._serve_batch(states[first:first + self.batch])
        finally:
            self.counters.add("gateway_s", time.perf_counter() - started)

    def _serve_batch(self, states: list[BlockState]) -> None:
        tokens = [self._token() for _ in states]
        try:
            outcomes = self.cache.claim_many({state.key: token for state, token in zip(states, tokens)})
        except redis.RedisError as exc:
            for state in states:
                self.give_up(state, CacheUnavailable(f"the cache server is unavailable ({exc})"))
            return
        cached = [state for state, outcome in zip(states, outcomes) if outcome == CACHED]
        for state, token, outcome in zip(states, tokens, outcomes):
            if outcome == CLAIMED:
                state.token = token
                self.counters.add("misses")
                self._guarded_compute(state)
            elif outcome != CACHED:  # failed, or someone else's: read its error or wait, as for one block
                self._serve(state)
        self._serve_cached(cached)

    def _serve_cached(self, states: list[BlockState]) -> None:
        """Finish blocks found cached, reading a few MB of values per round trip (an entry gone or refused
        since: the way of one block)."""
        while states:
            size, count = 0, 0
            while count < len(states) and (count == 0 or size + _nbytes(states[count]) <= self.read_batch_bytes):
                size, count = size + _nbytes(states[count]), count + 1
            batch, states = states[:count], states[count:]
            try:
                values = self.cache.get_many([state.key for state in batch])
            except redis.RedisError as exc:
                for state in batch:
                    self.give_up(state, CacheUnavailable(f"the cache server is unavailable ({exc})"))
                continue
            for state, value in zip(batch, values):
                if value is not None and self._usable(state, value):
                    self.counters.add("hits")
                    self.finish(state, values=value)
                else:
                    self._serve(state)

    def _token(self) -> str:
        """A claim token of ours, unique to this claim."""
        return f"{self._token_prefix}-{next(self._token_numbers)}"

    def _guarded_compute(self, state: BlockState) -> None:
        try:
            self.compute(state)
        except Exception as exc:  # e.g. the raw data could not be read: nobody may wait for this block forever
            log.debug("block %s failed before it reached a worker: %s", state.key, exc)  # its waiters report it
            self.give_up(state, exc)

    def _serve(self, state: BlockState) -> None:
        token = self._token()
        try:
            if self._served_from_cache(state):
                return
            if not self.cache.claim(state.key, token):
                if not self._served_from_cache(state):  # it may have finished or failed since we looked
                    self.counters.add("waited")
                return
        except redis.RedisError as exc:
            self.give_up(state, CacheUnavailable(f"the cache server is unavailable ({exc})"))
            return
        except Exception as exc:  # nobody may wait for this block forever
            log.debug("block %s failed before it was claimed: %s", state.key, exc)  # its waiters report it
            self.give_up(state, exc)
            return
        self.counters.add("misses")
        state.token = token
        self._guarded_compute(state)

    def _served_from_cache(self, state: BlockState) -> bool:
        """Finish the block from its cached values or recorded error, if either is there."""
        values = self.cache.get(state.key)
        if values is not None and self._usable(state, values):
            self.counters.add("hits")
            self.finish(state, values=values)
            return True
        message = self.cache.error(state.key)
        if message is not None:  # recorded by the owner that computed it: its failure is the block's
            self.finish(state, error=TaskError(message, deterministic=True))
            return True
        return False

    def _usable(self, state: BlockState, values: np.ndarray) -> bool:
        """True if cached ``values`` fit the block; a value of the wrong shape or type is dropped."""
        if _as_expected(values, state.expected):
            return True
        log.warning("dropping cache entry %s: %s %s instead of %s %s", state.key, values.shape, values.dtype,
                    *state.expected)
        self.cache.discard(state.key)
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
        """Put a block we computed into the cache (its claim goes, everyone waiting hears of it); the blocks of
        one settling batch (:mod:`backend.distributed.settling`) are written together when it ends."""
        with self._store_lock:
            self._to_store.append((state.key, values))
        after_settling(self._write_stores)

    def _write_stores(self) -> None:
        with self._store_lock:
            blocks, self._to_store = self._to_store, []
        if not blocks:
            return
        try:
            self.cache.complete_many(blocks)
        except redis.RedisError as exc:
            log.warning("could not store %d blocks: %s", len(blocks), exc)

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

    def _every_interval(self, action: Callable[[], None]) -> None:
        while not self._stop.wait(self.interval):
            action()

    def renew(self) -> None:
        """Renew every lease we hold in one call; a block whose lease was lost is handed over to its new holder."""
        held = {}
        for state in self.table.states(owned=True):
            token = state.token  # read once: it may be given up meanwhile
            if token:
                held[state.key] = (state, token)
        try:
            lost = self.cache.renew_all({key: token for key, (_, token) in held.items()})
        except redis.RedisError as exc:  # given up before the leases lapse: the next round tries again
            log.warning("could not renew %d leases: %s", len(held), exc)
            return
        except Exception:  # never let one bad round stop the renewals
            log.exception("lease renewal: unexpected error (going on)")
            return
        for key in lost:
            self._lease_lost(*held[key])

    def _lease_lost(self, state: BlockState, token: str) -> None:
        """We no longer hold the block: drop our computation (its result would be ignored); the block now waits
        like any other for its holder's notice, or is taken over by the watchdog if nobody holds it."""
        with self.table.lock:
            if state.token != token:
                return  # finished, given up or re-claimed meanwhile
            state.token = None
            future, state.future, state.task = state.future, None, None
        if self.table.get(state.key) is not state:
            return  # it was delivered just now (completing drops the lease)
        log.warning("lost the lease of block %s (the cache server or this process stalled); its holder, or a "
                    "new claim, will deliver it", state.key)
        if future is not None:
            self.cancel(future)

    def check(self) -> None:
        """Fail blocks past their deadline; take over blocks we wait for whose owner has let its lease lapse
        (their leases asked for in one round trip)."""
        try:
            now = self.clock()
            states = self.table.states()
            for state in states:
                if now - state.since > self.deadline_s:
                    self._overdue(state)
            waiting = [s for s in states if not s.token and self.interval < now - s.since <= self.deadline_s]
            held = self.cache.leased_many([state.key for state in waiting])
            for state, leased in zip(waiting, held):
                if not leased and not state.token:
                    self.look_up(state)  # the owner died or gave up: take over
        except redis.RedisError as exc:
            self._cache_gone(exc)
        except Exception:  # never let one bad block stop the checks of all the others
            log.exception("gateway watchdog: unexpected error (going on)")

    def _overdue(self, state: BlockState) -> None:
        """Fail the waiters of a block not delivered by its deadline (ours: its computation is dropped)."""
        with self.table.lock:
            future, state.future = state.future, None
        if future is not None:
            self.cancel(future)
        log.warning("block %s was not delivered within %g s", state.key, self.deadline_s)
        self.give_up(state, BlockOverdue(f"a block was not delivered within {self.deadline_s:g} s "
                                         "(cache.block_deadline_s)"))

    def stop(self) -> None:
        """Stop the lease renewal, the watchdog and the notice listener."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.stop()


def _nbytes(state: BlockState) -> int:
    """Bytes of a block's values (its widest dtype)."""
    shape, dtypes = state.expected
    itemsize = max(np.dtype(d).itemsize for d in (dtypes if isinstance(dtypes, tuple) else (dtypes,)))
    return int(np.prod(shape, dtype=np.int64)) * itemsize


def _as_expected(values: np.ndarray, expected: tuple) -> bool:
    """True if cached ``values`` have the shape and one of the dtypes a block expects."""
    shape, dtypes = expected
    return values.shape == shape and values.dtype in (dtypes if isinstance(dtypes, tuple) else (dtypes,))
