"""The gateway: region requests -> blocks -> cache, claim or wait -> executor -> progressive delivery.

Every block a request needs is looked up in the cache; a missing one is claimed (so no other request,
here or in another process, computes it too) and sent to the executor, or, if someone else holds its
claim, awaited through the cache's completion notices. A watchdog renews our claims and re-claims
blocks whose owner died. Nothing here imports Qt; the viewer observes requests through callbacks.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import redis

from backend.cache.block_cache import BlockCache, block_key
from backend.compute.geometry import Block, BlockGrid, Roi
from backend.compute.pipeline import BlockTask, Pipeline
from backend.errors import TransientError, UserError, is_deterministic
from backend.io.sources import DataSource
from backend.service.block_state import BlockState
from backend.service.region import RegionRequest

log = logging.getLogger(__name__)
RAW = "Raw"
VISIBLE, SIDE_VIEW, PREFETCH, BATCH = 0, 1, 2, 3  # request priorities: lower is served first


class CacheUnavailable(UserError):
    """The cache server cannot be reached."""


@dataclass(frozen=True)
class GatewayConfig:
    """Block geometry and timing of a gateway."""

    block_shape: tuple[int, int, int, int] = (1, 64, 64, 64)
    lease_s: float = 10.0
    raw_by_path: bool = False  # tasks name the raw data's file and region; workers read it themselves


class Gateway:
    """Serves regions of raw data and classifier results for one image."""

    def __init__(self, source: DataSource, pipeline: Pipeline, executor, cache: BlockCache,
                 config: GatewayConfig = GatewayConfig(), on_cache_lost: Callable[[], None] | None = None):
        self.source, self.executor, self.cache, self.config = source, executor, cache, config
        self.on_cache_lost = on_cache_lost
        self.data_fingerprint = source.fingerprint()
        self.set_pipeline(pipeline)
        self._blocks: dict[str, BlockState] = {}
        self._lock = threading.Lock()
        self._counter_lock = threading.Lock()
        self.counters = {"hits": 0, "misses": 0, "waited": 0, "computed": 0, "failed": 0, "gateway_s": 0.0}
        self._stop = threading.Event()
        self._listener = cache.listen(self._on_notice, self._on_lost, self._on_back)
        if not self._listener.subscribed.wait(10):
            self._listener.stop()
            raise CacheUnavailable("the cache server does not answer")
        self._watchdog = threading.Thread(target=self._watch, name="gateway-watchdog", daemon=True)
        self._watchdog.start()
        self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-helper")

    def set_pipeline(self, pipeline: Pipeline) -> None:
        """Use another classifier or feature set from now on (its blocks get other keys)."""
        self.pipeline = pipeline
        self.pipeline_fingerprint = self.executor.add_pipeline(pipeline)
        self._grids: dict[tuple[int, ...], BlockGrid] = {}
        self.grid = self.grid_for(self.config.block_shape)

    def grid_for(self, block_shape: tuple[int, int, int, int]) -> BlockGrid:
        """The block grid of ``block_shape`` (tzyx) with the current pipeline's halo."""
        grid = self._grids.get(block_shape)
        if grid is None:
            grid = self._grids[block_shape] = BlockGrid(self.source.spatial_shape, block_shape,
                                                        (0,) + self.pipeline.halo)
        return grid

    def request(self, kind: str, roi: Roi, priority: int = 0,
                on_block: Callable[[Roi, np.ndarray], None] | None = None,
                block_shape: tuple[int, int, int, int] | None = None) -> RegionRequest:
        """Start assembling ``roi`` (tzyx) of a layer: ``Raw`` or a result kind of the pipeline.

        Results are computed in blocks of ``block_shape`` (default: the gateway's); a view asks for
        blocks one voxel thin along its normal so that a slice costs no more than itself.
        """
        if not Roi.from_shape(self.source.spatial_shape).contains(roi):
            raise ValueError(f"{roi} is outside the image {self.source.spatial_shape}")
        if kind == RAW:
            req = RegionRequest(self, kind, roi, self.source.channels, self.source.dtype, on_block)
            req.pending.add(RAW)
            req._deliver(RAW, roi, self.source.read(roi))
            return req
        req = RegionRequest(self, kind, roi, self.pipeline.channels(kind), self.pipeline.dtype(kind), on_block)
        fresh: list[BlockState] = []
        hurried: list[BlockState] = []
        with self._lock:
            blocks = [(block_key(self.data_fingerprint, self.pipeline_fingerprint, kind, b.roi), b)
                      for b in self.grid_for(block_shape or self.config.block_shape).blocks_in(roi)]
            req.pending.update(key for key, _ in blocks)
            for key, block in blocks:
                state = self._blocks.get(key)
                if state is None:
                    expected = (1, *block.roi.shape[1:], self.pipeline.channels(kind)), self.pipeline.dtype(kind)
                    state = self._blocks[key] = BlockState(key, block, kind, priority, expected=expected)
                    fresh.append(state)
                elif priority < state.priority:
                    state.priority = priority
                    hurried.append(state)
                state.waiters.append(req)
        for state in hurried:
            self._hurry(state)
        for state in fresh:
            self._look_up(state)
        return req

    def held_elsewhere(self, kind: str, roi: Roi) -> bool:
        """True if the one block under ``roi`` is being computed by another process (it holds the claim)."""
        block = next(iter(self.grid.blocks_in(roi)))
        key = block_key(self.data_fingerprint, self.pipeline_fingerprint, kind, block.roi)
        with self._lock:
            if key in self._blocks:
                return False
        try:
            return self.cache.leased(key)
        except redis.RedisError:
            return False

    def request_derived(self, key: str, roi: Roi, channels: int, dtype, produce: Callable[[], Future],
                        priority: int = 0) -> RegionRequest:
        """A value derived from results (a frame's objects) under ``key``, computed once however many ask.

        It goes through the same look-up, claim and notices as blocks; ``produce()`` is called only by the
        claim's owner and returns a future of the ``roi``-shaped values without the time axis.
        """
        req = RegionRequest(self, "derived", roi, channels, dtype, None)
        req.pending.add(key)
        with self._lock:
            state = self._blocks.get(key)
            fresh = state is None
            if fresh:
                state = self._blocks[key] = BlockState(key, Block((), roi, roi), "derived", priority, produce=produce,
                                                   expected=((1, *roi.shape[1:], channels), np.dtype(dtype)))
            state.waiters.append(req)
        if fresh:
            self._look_up(state)
        return req

    def run_local(self, function: Callable, *args) -> Future:
        """Run a short computation on the results (labelling a frame) on the gateway's helper thread."""
        return self._helper.submit(function, *args)

    def status(self) -> dict:
        """Executor status plus cache hits, misses and blocks in progress."""
        with self._lock:
            in_progress = len(self._blocks)
        with self._counter_lock:
            counters = dict(self.counters, gateway_s=round(self.counters["gateway_s"], 3))
        return {"executor": self.executor.status(), "blocks_in_progress": in_progress,
                "cache_memory_mb": self.cache.memory_mb(), **counters}

    def close(self) -> None:
        """Stop the watchdog and the notice listener; drop our queued blocks and release our claims."""
        self._stop.set()
        self._watchdog.join(timeout=5)
        self._listener.stop()
        self._helper.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            owned = [(s.key, s.token) for s in self._blocks.values() if s.token]
            waiting = list(self._blocks.values())
            self._blocks.clear()
        for state in waiting:
            if state.future is not None:
                self.executor.cancel(state.future)  # nobody will look at it any more
        for key, token in owned:
            with contextlib.suppress(redis.RedisError):
                self.cache.release(key, token, retry=False)  # closing: never wait for a dead cache
        for state in waiting:
            for req in state.waiters:
                req._fail(CacheUnavailable("the gateway was closed"))

    # -- one block ------------------------------------------------------------------------------------
    def _count(self, name: str, amount: float = 1) -> None:
        with self._counter_lock:
            self.counters[name] += amount

    def _look_up(self, state: BlockState) -> None:
        started = time.perf_counter()
        try:
            self._serve(state)
        finally:
            self._count("gateway_s", time.perf_counter() - started)

    def _serve(self, state: BlockState) -> None:
        try:
            if self._served_from_cache(state):
                return
            token = uuid.uuid4().hex
            if self.cache.claim(state.key, token):
                self._count("misses")
                state.token = token
                self._compute(state)
            elif not self._served_from_cache(state):  # it may have finished or failed since we looked
                self._count("waited")
        except redis.RedisError as exc:
            self._give_up(state, CacheUnavailable(f"the cache server is unavailable ({exc})"))
        except Exception as exc:  # e.g. the raw data could not be read: nobody may wait for this block forever
            log.warning("block %s failed before it reached a worker: %s", state.key, exc)
            self._give_up(state, exc)

    def _give_up(self, state: BlockState, error: Exception) -> None:
        """Fail the block's waiters; record a deterministic error for everyone, else just free our claim."""
        token, state.token = state.token, None
        self._finish(state, error=error)
        if token is None:
            return
        try:
            if is_deterministic(error):
                self.cache.fail(state.key, f"{type(error).__name__}: {error}")
            else:
                self.cache.abandon(state.key, token)  # others waiting elsewhere look again and may claim it
        except redis.RedisError as exc:
            log.warning("could not release block %s: %s (its lease expires by itself)", state.key, exc)

    def _served_from_cache(self, state: BlockState) -> bool:
        """Finish the block from its cached values or recorded error, if either is there."""
        values = self.cache.get(state.key)
        if values is not None and (values.shape, values.dtype) != state.expected:
            log.warning("dropping cache entry %s: %s %s instead of %s %s", state.key, values.shape, values.dtype,
                        *state.expected)
            self.cache.discard(state.key)
            values = None
        if values is not None:
            self._count("hits")
            self._finish(state, values=values)
            return True
        message = self.cache.error(state.key)
        if message is not None:
            self._finish(state, error=RuntimeError(message))
            return True
        return False

    def _compute(self, state: BlockState) -> None:
        if state.produce is not None:
            future = state.future = state.produce()
            future.add_done_callback(lambda f, s=state: self._computed(s, f))
            return
        block = state.block
        halo = block.halo_roi
        if self.config.raw_by_path:
            raw, reference = np.empty((0, 0, 0, 0), self.source.dtype), self.source.reference(halo)
        else:
            raw, reference = self.source.read(halo)[0], None
        state.task = BlockTask(state.key, state.kind, raw, halo.start[1:], self.source.spatial_shape[1:],
                               tuple(zip(block.roi.start[1:], block.roi.stop[1:])), self.pipeline_fingerprint,
                               reference)
        self._submit(state)

    def _submit(self, state: BlockState) -> None:
        """Queue the block's task at its priority (again, if a more urgent request came meanwhile)."""
        priority = state.priority
        future = self.executor.submit(state.task, priority)
        with self._lock:
            state.future = future
        future.add_done_callback(lambda f, s=state: self._computed(s, f))
        if state.priority < priority:
            self._hurry(state)

    def _hurry(self, state: BlockState) -> None:
        """Take a queued task off the executor's queue: its cancellation re-submits it at the new priority.

        Never called with the gateway lock held (the executor's callbacks take it).
        """
        queued = state.future
        if queued is not None and state.produce is None:
            self.executor.cancel(queued)

    def _computed(self, state: BlockState, future: Future) -> None:
        if future is not state.future:
            return
        started = time.perf_counter()
        try:
            if future.cancelled():
                self._cancelled(state)
            else:
                state.future = None  # break the state <-> future cycle so the result is freed at once
                self._store(state, future)
                state.task = None
        finally:
            self._count("gateway_s", time.perf_counter() - started)

    def _cancelled(self, state: BlockState) -> None:
        """A task taken off the queue: submit it again if someone still wants it, else free the claim."""
        with self._lock:
            state.future = None
            wanted = bool(state.waiters) and self._blocks.get(state.key) is state
            if not wanted and self._blocks.get(state.key) is state:
                del self._blocks[state.key]
        if wanted and state.produce is None:
            self._submit(state)
        else:
            state.task = None
            self._give_up(state, TransientError("the block's computation was cancelled"))

    def _store(self, state: BlockState, future: Future) -> None:
        error = future.exception()
        if error is not None:
            self._count("failed")
            self._give_up(state, error)
            return
        values = future.result()[None]
        self._count("computed")
        self._finish(state, values=values)
        try:
            self.cache.complete(state.key, values)
        except redis.RedisError as exc:
            log.warning("could not store block %s: %s", state.key, exc)

    def _finish(self, state: BlockState, values: np.ndarray | None = None, error: Exception | None = None) -> None:
        key = state.key
        with self._lock:
            if self._blocks.get(key) is not state:
                return  # finished already, or dropped (a newer request for the same block has its own state)
            del self._blocks[key]
        waiters, state.waiters = state.waiters, []
        for req in waiters:
            if error is not None:
                req._fail(error)
            else:
                req._deliver(key, state.block.roi, values)

    def _detach(self, req: RegionRequest) -> None:
        unwanted = []
        with self._lock:
            for key in list(req.pending):
                state = self._blocks.get(key)
                if state is None:
                    continue
                state.waiters = [w for w in state.waiters if w is not req]
                if not state.waiters and state.token is None:
                    del self._blocks[key]  # we only waited for another owner's result
                elif not state.waiters:
                    unwanted.append(state)
        for state in unwanted:
            self._hurry(state)  # a queued task is cancelled and, still unwanted then, its claim freed

    # -- notices and the watchdog ------------------------------------------------------------------------
    def _on_notice(self, key: str) -> None:
        with self._lock:
            state = self._blocks.get(key)
            interested = state is not None and state.token is None
        if interested:
            self._look_up(state)

    def _on_lost(self, exc: Exception) -> None:
        """The notice subscription broke: restart an embedded server; waiters wait (calls retry)."""
        log.warning("lost the cache server's notices (%s); waiting for it to come back", exc)
        if self.on_cache_lost is not None:
            self.on_cache_lost()

    def _on_back(self) -> None:
        """Subscribed again: notices sent meanwhile were lost, so every waiting block looks again."""
        with self._lock:
            waiting = [s for s in self._blocks.values() if s.token is None]
        for state in waiting:
            self._look_up(state)

    def _cache_gone(self, exc: Exception) -> None:
        """The cache stayed unreachable beyond the retry window: fail what waits for other owners."""
        with self._lock:
            waiting = [s for s in self._blocks.values() if s.token is None]
        for state in waiting:
            self._finish(state, error=CacheUnavailable(f"the cache server is unavailable ({exc})"))

    def _watch(self) -> None:
        interval = self.config.lease_s / 3
        while not self._stop.wait(interval):
            try:
                self._renew_or_take_over(interval)
            except redis.RedisError as exc:
                self._cache_gone(exc)
            except Exception:  # never let one bad block stop the renewal of all the others
                log.exception("gateway watchdog: unexpected error (going on)")

    def _renew_or_take_over(self, interval: float) -> None:
        with self._lock:
            states = list(self._blocks.values())
        for state in states:
            if state.token:
                self.cache.renew(state.key, state.token)
            elif time.monotonic() - state.since > interval and not self.cache.leased(state.key):
                self._look_up(state)  # the owner died or gave up: take over
