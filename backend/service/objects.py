"""The Objects layer: thresholded, labelled objects of time frames, built block by block on the gateway.

Objects are labelled per frame (an object's ID depends on the whole frame) but computed and cached per
block: a frame's :class:`~backend.service.blockwise_objects.FrameJob` reads the probabilities through
the gateway one block plus smoothing halo at a time (so they are cached and shared), has each block's
two passes computed as tasks on the gateway's executor (workers, local processes or Dask, with their
retries, priorities and deadlines), joins the blocks' summaries and writes each block's final labels.
Every block of labels is a derived value of the gateway (``request_derived``) under a key that includes
the thresholding parameters: requests get blocks as they finish, and a block already in the cache is
never labelled again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from backend.cache.block_cache import block_key
from backend.compute.geometry import Roi
from backend.compute.object_blocks import block_boxes
from backend.compute.threshold import ThresholdSettings, settings_fingerprint, unsupported_method
from backend.distributed.futures import settle
from backend.errors import UserError
from backend.service.blockwise_objects import FrameJob
from backend.service.gateway import PREFETCH, Gateway
from backend.service.object_runners import ExecutorRunner
from backend.service.region import RegionRequest
from backend.service.snapshot import PipelineSnapshot

OBJECTS = "Objects"
LABELS = np.dtype(np.uint32)  # the layer's labels: uint32, or uint64 for a frame whose highest ID needs it
WIDE_LABELS = np.dtype(np.uint64)


def frame_roi(gateway: Gateway, t: int) -> Roi:
    """The whole of time step ``t``."""
    _, z, y, x = gateway.source.spatial_shape
    return Roi((t, 0, 0, 0), (t + 1, z, y, x))


def object_block_shape(gateway: Gateway) -> tuple[int, int, int]:
    """The (z, y, x) blocks objects are labelled, cached and delivered in: the gateway's blocks."""
    return tuple(gateway.config.block_shape[1:])


def object_blocks(gateway: Gateway, roi: Roi) -> list[Roi]:
    """The object blocks (tzyx, one time step each) that ``roi`` touches."""
    shape = gateway.source.spatial_shape[1:]
    blocks = []
    for t in range(roi.start[0], roi.stop[0]):
        for start, stop in block_boxes(shape, object_block_shape(gateway)).values():
            block = Roi((t,) + start, (t + 1,) + stop)
            if block.intersect(roi) is not None:
                blocks.append(block)
    return blocks


def objects_key(gateway: Gateway, t: int, settings: ThresholdSettings, snapshot: PipelineSnapshot | None = None,
                block: Roi | None = None) -> str:
    """Cache key of one block of a frame's labels (default: the frame's first block): data, classifier,
    parameters and block."""
    snapshot = snapshot or gateway.snapshot
    pipeline = f"{snapshot.fingerprint}.{settings_fingerprint(settings)}"
    block = block or object_blocks(gateway, Roi((t, 0, 0, 0), (t + 1, 1, 1, 1)))[0]
    return block_key(snapshot.data_fingerprint, pipeline, OBJECTS, block)


class ObjectsRequest:
    """A region of the Objects layer being assembled from its blocks; ``future`` resolves to the
    ``(t, z, y, x, 1)`` labels (uint32, widened to uint64 when a block of a frame whose IDs need it arrives),
    ``on_block(part, values)`` is called for each block as it finishes."""

    def __init__(self, roi: Roi, on_block: Callable[[Roi, np.ndarray], None] | None, blocks: int):
        self.roi, self.on_block = roi, on_block
        self.data = np.zeros(roi.shape + (1,), LABELS)
        self.future: Future = Future()
        self.parts: list[RegionRequest] = []
        self._pending = blocks
        self._lock = threading.Lock()
        self.future.add_done_callback(self._stop_parts_if_cancelled)

    def result(self, timeout: float | None = None) -> np.ndarray:
        """The assembled region (raises the first block's error, or TimeoutError)."""
        return self.future.result(timeout)

    def cancel(self) -> None:
        """Stop waiting; blocks nobody else wants are dropped."""
        self.future.cancel()

    def watch(self, part: RegionRequest) -> None:
        """Take one of the region's blocks into the region when it arrives."""
        with self._lock:
            self.parts.append(part)
        if self.future.cancelled():
            part.cancel()
        part.future.add_done_callback(lambda done: self._deliver(part.roi, done))

    def _stop_parts_if_cancelled(self, done: Future) -> None:
        if done.cancelled():
            with self._lock:
                parts = list(self.parts)
            for part in parts:
                part.cancel()

    def _deliver(self, block: Roi, done: Future) -> None:
        if done.cancelled():
            return
        if done.exception() is not None:
            settle(self.future, error=done.exception())
            return
        part = block.intersect(self.roi)
        values = done.result()
        with self._lock:
            if self.future.done():
                return
            if values.dtype != self.data.dtype and values.dtype == WIDE_LABELS:
                self.data = self.data.astype(WIDE_LABELS)
            self.data[part.relative_to(self.roi)] = values[part.relative_to(block)]
            self._pending -= 1
            finished = self._pending == 0
            if self.on_block is not None:  # under the lock: every block is announced before the future resolves
                self.on_block(part, self.data[part.relative_to(self.roi)])
        if finished:
            settle(self.future, result=self.data)


def request_objects(gateway: Gateway, roi: Roi, settings: ThresholdSettings, priority: int = 0,
                    on_block: Callable[[Roi, np.ndarray], None] | None = None,
                    snapshot: PipelineSnapshot | None = None) -> ObjectsRequest:
    """Start assembling the labels ``(t, z, y, x, 1)`` of ``roi`` (uint32, or uint64 when a frame's IDs need it),
    each frame labelled as a whole and delivered block by block; keys and probabilities come from one snapshot
    (default: the current one). UserError at once for a thresholding method that is not computed here."""
    _refuse_unsupported(settings)
    if not Roi.from_shape(gateway.source.spatial_shape).contains(roi):
        raise ValueError(f"{roi} is outside the image {gateway.source.spatial_shape}")
    snapshot = snapshot or gateway.snapshot
    blocks = object_blocks(gateway, roi)
    request = ObjectsRequest(roi, on_block, len(blocks))
    for block in blocks:
        request.watch(_request_block(gateway, block, settings, priority, snapshot))
    return request


def request_frame(gateway: Gateway, t: int, settings: ThresholdSettings, priority: int = 0,
                  snapshot: PipelineSnapshot | None = None) -> Future:
    """A future of one whole frame's labels ``(1, z, y, x, 1)`` (cancelling it stops waiting for its blocks);
    UserError at once for a thresholding method that is not computed here."""
    _refuse_unsupported(settings)
    return request_objects(gateway, frame_roi(gateway, t), settings, priority, snapshot=snapshot).future


def _refuse_unsupported(settings: ThresholdSettings) -> None:
    reason = unsupported_method(settings)
    if reason is not None:
        raise UserError(reason)


def _request_block(gateway: Gateway, block: Roi, settings: ThresholdSettings, priority: int,
                   snapshot: PipelineSnapshot) -> RegionRequest:
    """One block of labels through the gateway: from the cache, from another process, or from the frame's job;
    uint32 or uint64 as the frame's merge decides (the cached block records its dtype)."""
    t = block.start[0]

    def produce() -> Future:
        return _frame_job(gateway, t, settings, priority, snapshot).block(block.start[1:])

    key = objects_key(gateway, t, settings, snapshot, block)
    return gateway.request_derived(key, block, 1, (LABELS, WIDE_LABELS), produce, priority)


def _frame_job(gateway: Gateway, t: int, settings: ThresholdSettings, priority: int,
               snapshot: PipelineSnapshot) -> FrameJob:
    """The running job labelling frame ``t`` with ``settings`` (started once however many blocks ask).

    A new job also asks for every block of the frame at prefetch priority, so that the whole frame ends
    up in the cache and moving through it labels nothing again.
    """
    frame_key = f"{objects_key(gateway, t, settings, snapshot)}.frame"

    def read_box(start: tuple[int, int, int], stop: tuple[int, int, int]) -> np.ndarray:
        roi = Roi((t,) + tuple(start), (t + 1,) + tuple(stop))
        return gateway.request("Probabilities", roi, priority, snapshot=snapshot).result()[0]

    def make(on_end: Callable[[FrameJob], None]) -> FrameJob:
        return FrameJob(read_box, gateway.source.spatial_shape[1:], settings, object_block_shape(gateway), None,
                        on_end=on_end, runner=ExecutorRunner(gateway.executor, priority))

    job, new = gateway.frame_jobs.job(frame_key, make)
    if not new:
        return job
    try:
        for block in object_blocks(gateway, frame_roi(gateway, t)):  # before the start: the job cannot end first
            _request_block(gateway, block, settings, PREFETCH, snapshot)
    finally:
        job.start()
    return job
