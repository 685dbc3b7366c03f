"""The gateway: region requests -> blocks -> cache, claim or wait -> executor -> progressive delivery.

A request is cut into blocks of the current :class:`~backend.service.snapshot.PipelineSnapshot`; each
block joins the table of blocks in progress (one state however many requests want it) and goes through
:class:`~backend.service.claims.Claims` (cache, claim, notices, watchdog). A block we claim becomes a
task for the executor; its result is delivered to every waiting request and stored in the cache. Nothing
here imports Qt; the viewer observes requests through callbacks.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import redis

from backend.compute.geometry import Block, BlockGrid, Roi
from backend.compute.pipeline import BlockTask, Pipeline
from backend.distributed.executor import Executor
from backend.errors import TransientError
from backend.io.sources import DataSource
from backend.service.block_state import BlockState, BlockTable
from backend.service.blockwise_objects import FrameJobs
from backend.service.claims import CacheUnavailable, Claims
from backend.service.gateway_status import Counters, GatewayStatus
from backend.service.region import RegionRequest
from backend.service.snapshot import PipelineSnapshot

log = logging.getLogger(__name__)
RAW = "Raw"
VISIBLE, SIDE_VIEW, PREFETCH, BATCH = 0, 1, 2, 3  # request priorities: lower is served first
__all__ = ["BATCH", "PREFETCH", "RAW", "SIDE_VIEW", "VISIBLE", "CacheUnavailable", "Gateway", "GatewayConfig"]


@dataclass(frozen=True)
class GatewayConfig:
    """Block geometry of a gateway, and whether workers read the raw data themselves."""

    block_shape: tuple[int, int, int, int] = (1, 64, 64, 64)
    raw_by_path: bool = False  # tasks name the raw data's file and region; workers read it themselves


class Gateway:
    """Serves regions of raw data and classifier results for one image (``cache``: a BlockCache or a fake)."""

    def __init__(self, source: DataSource, pipeline: Pipeline, executor: Executor, cache,
                 config: GatewayConfig = GatewayConfig(), on_cache_lost: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.source, self.executor, self.cache, self.config, self.clock = source, executor, cache, config, clock
        self.data_fingerprint = source.fingerprint()
        self.set_pipeline(pipeline)
        self.table = BlockTable()
        self.counters = Counters()
        self.claims = Claims(cache, self.table, self.counters, self._compute, self._finish, executor.cancel,
                             on_cache_lost, clock)
        self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-helper")
        self.frame_jobs = FrameJobs()  # the frames whose objects are being labelled (backend.service.objects)

    # -- the pipeline ---------------------------------------------------------------------------------
    def set_pipeline(self, pipeline: Pipeline) -> None:
        """Use another classifier or feature set from now on (its blocks get other keys); blocks asked for
        before keep the snapshot they were keyed with."""
        fingerprint = self.executor.add_pipeline(pipeline)
        self.snapshot = PipelineSnapshot(self.data_fingerprint, pipeline, fingerprint, self.source.spatial_shape)
        # The executor keeps the pipeline while a snapshot of it lives (the current one, a block's, an export's),
        # not forever: live training makes one per retrain.
        weakref.finalize(self.snapshot, self.executor.remove_pipeline, fingerprint).atexit = False

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline new requests are computed with."""
        return self.snapshot.pipeline

    @property
    def pipeline_fingerprint(self) -> str:
        """The fingerprint of :attr:`pipeline` (part of every block key)."""
        return self.snapshot.fingerprint

    @property
    def grid(self) -> BlockGrid:
        """The block grid of the gateway's own block shape under the current pipeline."""
        return self.snapshot.grid(self.config.block_shape)

    # -- requests -------------------------------------------------------------------------------------
    def request(self, kind: str, roi: Roi, priority: int = 0,
                on_block: Callable[[Roi, np.ndarray], None] | None = None,
                block_shape: tuple[int, int, int, int] | None = None,
                snapshot: PipelineSnapshot | None = None) -> RegionRequest:
        """Start assembling ``roi`` (tzyx) of a layer: ``Raw`` or a result kind of the pipeline.

        Results are computed in blocks of ``block_shape`` (default: the gateway's) under ``snapshot``
        (default: the current one); a view asks for blocks one voxel thin along its normal so that a slice
        costs no more than itself.
        """
        if not Roi.from_shape(self.source.spatial_shape).contains(roi):
            raise ValueError(f"{roi} is outside the image {self.source.spatial_shape}")
        if kind == RAW:
            req = RegionRequest(self, kind, roi, self.source.channels, self.source.dtype, on_block)
            req.pending.add(RAW)
            req.deliver(RAW, roi, self.source.read(roi))
            return req
        snap = snapshot or self.snapshot
        req = RegionRequest(self, kind, roi, snap.pipeline.channels(kind), snap.pipeline.dtype(kind), on_block)
        blocks = [(snap.key(kind, b.roi), b) for b in snap.grid(block_shape or self.config.block_shape).blocks_in(roi)]
        req.pending.update(key for key, _ in blocks)
        fresh, hurried = [], []
        for key, block in blocks:
            def make(key=key, block=block) -> BlockState:
                return BlockState(key, block, kind, priority, snap, self.clock(),
                                  expected=snap.expected(kind, block.roi))

            state, is_fresh, is_hurried = self.table.join(key, make, req, priority)
            (fresh if is_fresh else hurried if is_hurried else []).append(state)
        for state in hurried:
            self._hurry(state)
        self.claims.look_up_many(fresh)
        return req

    def held_elsewhere(self, kind: str, roi: Roi, snapshot: PipelineSnapshot | None = None) -> bool:
        """True if the one block under ``roi`` is being computed by another process (it holds the claim)."""
        snap = snapshot or self.snapshot
        block = next(iter(snap.grid(self.config.block_shape).blocks_in(roi)))
        key = snap.key(kind, block.roi)
        if self.table.get(key) is not None:
            return False
        try:
            return self.cache.leased(key)
        except redis.RedisError:  # the cache is down: say no, the request itself reports it
            return False

    def request_derived(self, key: str, roi: Roi, channels: int, dtype, produce: Callable[[], Future],
                        priority: int = 0) -> RegionRequest:
        """A value derived from results (a frame's objects) under ``key``, computed once however many ask.

        It goes through the same look-up, claim and notices as blocks; ``produce()`` is called only by the
        claim's owner and returns a future of the ``roi``-shaped values without the time axis. ``dtype`` may be a
        tuple of the dtypes the values may have (the first is the region's until a wider one arrives).
        """
        dtypes = tuple(np.dtype(d) for d in (dtype if isinstance(dtype, tuple) else (dtype,)))
        req = RegionRequest(self, "derived", roi, channels, dtypes[0], None)
        req.pending.add(key)

        def make() -> BlockState:
            return BlockState(key, Block((), roi, roi), "derived", priority, None, self.clock(), produce=produce,
                              expected=((1, *roi.shape[1:], channels), dtypes))

        state, fresh, _ = self.table.join(key, make, req, priority)
        if fresh:
            self.claims.look_up(state)
        return req

    def run_local(self, function: Callable, *args) -> Future:
        """Run a short computation on the results (labelling a frame) on the gateway's helper thread."""
        return self._helper.submit(function, *args)

    def status(self) -> GatewayStatus:
        """Executor status plus cache hits, misses and blocks in progress."""
        return GatewayStatus(self.executor.status(), len(self.table), self.cache.memory_mb(),
                             **self.counters.values())

    def close(self) -> None:
        """Stop the watchdog, the notice listener and the frames' labellings; drop our queued blocks and
        release our claims."""
        self.frame_jobs.stop()  # first: a labelling asks for no block from now on
        self.claims.stop()
        self._helper.shutdown(wait=True, cancel_futures=True)
        waiting = self.table.clear()
        for state in waiting:
            if state.future is not None:
                self.executor.cancel(state.future)  # nobody will look at it any more
        self.claims.release(waiting)
        for state in waiting:
            for req in state.waiters:
                req.fail(CacheUnavailable("the gateway was closed"))
        if not self.frame_jobs.join():  # their reads in progress have just failed
            log.warning("a frame's labelling did not end within %.1f s of the gateway's close",
                        self.frame_jobs.stop_s)

    # -- computing a claimed block --------------------------------------------------------------------
    def _compute(self, state: BlockState) -> None:
        if state.produce is not None:
            future = state.future = state.produce()
            future.add_done_callback(lambda f, s=state: self._computed(s, f))
            return
        block, snap = state.block, state.snapshot
        halo = block.halo_roi
        if self.config.raw_by_path:
            raw, reference = np.empty((0, 0, 0, 0), self.source.dtype), self.source.reference(halo)
        else:
            raw, reference = self.source.read(halo)[0], None
        state.task = BlockTask(state.key, state.kind, raw, halo.start[1:], self.source.spatial_shape[1:],
                               tuple(zip(block.roi.start[1:], block.roi.stop[1:])), snap.fingerprint, reference)
        self._submit(state)

    def _submit(self, state: BlockState) -> None:
        """Queue the block's task at its priority (again, if a more urgent request came meanwhile)."""
        priority = state.priority
        future = self.executor.submit(state.task, priority)
        with self.table.lock:
            state.future = future
        future.add_done_callback(lambda f, s=state: self._computed(s, f))
        if state.priority < priority:
            self._hurry(state)

    def _hurry(self, state: BlockState) -> None:
        """Take a queued task off the executor's queue: its cancellation re-submits it at the new priority.

        Never called with the table's lock held (the executor's callbacks take it).
        """
        queued = state.future
        if queued is not None and state.produce is None:
            self.executor.cancel(queued)

    def _computed(self, state: BlockState, future: Future) -> None:
        if future is not state.future:
            return  # a task that was replaced (re-submitted at another priority)
        started = time.perf_counter()
        try:
            if future.cancelled():
                self._cancelled(state)
            else:
                state.future = None  # break the state <-> future cycle so the result is freed at once
                self._store(state, future)
                state.task = None
        finally:
            self.counters.add("gateway_s", time.perf_counter() - started)

    def _cancelled(self, state: BlockState) -> None:
        """A task taken off the queue: submit it again if someone still wants it, else free the claim."""
        state.future = None
        if self.table.keep_if_wanted(state) and state.produce is None:
            self._submit(state)
        else:
            state.task = None
            self.claims.give_up(state, TransientError("the block's computation was cancelled"))

    def _store(self, state: BlockState, future: Future) -> None:
        error = future.exception()
        if error is not None:
            self.counters.add("failed")
            self.claims.give_up(state, error)
            return
        values = future.result()[None]
        self.counters.add("computed")
        self._finish(state, values=values)
        self.claims.store(state, values)

    def _finish(self, state: BlockState, values: np.ndarray | None = None, error: Exception | None = None) -> None:
        """Deliver the block's values (or error) to every request waiting for it, once."""
        waiters = self.table.finish(state)
        for req in waiters or ():
            if error is not None:
                req.fail(error)
            else:
                req.deliver(state.key, state.block.roi, values)

    def detach(self, req: RegionRequest) -> None:
        """``req`` no longer waits; blocks nobody else wants are taken off the queue and their claims freed."""
        for state in self.table.detach(req):
            self._hurry(state)  # a queued task is cancelled and, still unwanted then, its claim freed
