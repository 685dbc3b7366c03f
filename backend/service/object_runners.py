"""Where the two passes of a block's labelling are computed: in the asking thread, or as executor tasks.

:class:`LocalRunner` computes a block in the thread that read it (no executor: tests, ``--prediction_maps``).
:class:`ExecutorRunner` sends it to an executor (ZeroMQ workers, local processes, Dask) as an
``Object Summary`` or ``Object Labels`` task of an :class:`~backend.compute.objects_pipeline.ObjectsPipeline`,
so a cluster labels the frame with the executor's retries, priorities and deadlines; the asking thread
waits for the result and checks it (a worker's reply is untrusted).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import wait
from contextlib import contextmanager
from typing import Protocol

import numpy as np

from backend.compute.object_blocks import BlockSummary, Box, Index, block_labels, summarise_block
from backend.compute.objects_pipeline import LABELS, SUMMARY, ObjectsPipeline, unpack_summary
from backend.compute.pipeline import BlockTask
from backend.compute.threshold import ThresholdSettings
from backend.distributed.executor import Executor
from backend.distributed.futures import TaskError

STOP_POLL_S = 0.05  # how often a thread waiting for a task looks whether its labelling was stopped


class FrameRunner(Protocol):
    """Pass 1 and pass 2 of one frame's blocks, for one set of threshold settings."""

    def summary(self, index: Index, data: np.ndarray, data_start: Index, box: Box, frame_shape: Index) -> BlockSummary:
        """Pass 1: the summary of the block ``box`` from its probabilities with halo ``data`` at ``data_start``."""

    def labels(self, data: np.ndarray, data_start: Index, box: Box, frame_shape: Index,
               lookup: np.ndarray) -> np.ndarray:
        """Pass 2: the block's final (z, y, x) labels through its ``lookup`` table."""


class BlockRunner(Protocol):
    """Makes the :class:`FrameRunner` of one frame's labelling (released when the labelling ends)."""

    def frame(self, settings: ThresholdSettings, stopped: threading.Event | None = None) -> Iterator[FrameRunner]:
        """A context manager giving the frame's runner; ``stopped`` set: waiting tasks are given up."""


class _LocalFrame:
    """Both passes computed in the calling thread."""

    def __init__(self, settings: ThresholdSettings) -> None:
        self.settings = settings

    def summary(self, index: Index, data: np.ndarray, data_start: Index, box: Box, frame_shape: Index) -> BlockSummary:
        """Pass 1 in this thread."""
        return summarise_block(index, data, data_start, box, frame_shape, self.settings)

    def labels(self, data: np.ndarray, data_start: Index, box: Box, frame_shape: Index,
               lookup: np.ndarray) -> np.ndarray:
        """Pass 2 in this thread."""
        labels, _ = block_labels(data, data_start, box, frame_shape, self.settings)
        return lookup[labels]


class LocalRunner:
    """Blocks labelled in the threads of the labelling itself (no executor)."""

    @contextmanager
    def frame(self, settings: ThresholdSettings, stopped: threading.Event | None = None) -> Iterator[FrameRunner]:
        """The frame's runner (nothing to register or release)."""
        yield _LocalFrame(settings)


class LabellingStopped(RuntimeError):
    """A frame's labelling was stopped while one of its blocks was computed on the executor."""


class _ExecutorFrame:
    """Both passes of a frame's blocks as tasks of one registered objects pipeline."""

    _keys = itertools.count()

    def __init__(self, executor: Executor, pipeline: ObjectsPipeline, fingerprint: str, priority: int,
                 stopped: threading.Event | None) -> None:
        self.executor, self.pipeline, self.fingerprint = executor, pipeline, fingerprint
        self.priority, self.stopped = priority, stopped

    def summary(self, index: Index, data: np.ndarray, data_start: Index, box: Box, frame_shape: Index) -> BlockSummary:
        """Pass 1 on the executor; the reply unpacked with every size checked."""
        packed = self._run(SUMMARY, data, data_start, box, frame_shape, None)
        return unpack_summary(packed, index, box, frame_shape, self.pipeline.settings.method == 1)

    def labels(self, data: np.ndarray, data_start: Index, box: Box, frame_shape: Index,
               lookup: np.ndarray) -> np.ndarray:
        """Pass 2 on the executor (the lookup table travels with the task)."""
        return self._run(LABELS, data, data_start, box, frame_shape, lookup)[..., 0]

    def _run(self, kind: str, data: np.ndarray, data_start: Index, box: Box, frame_shape: Index,
             lookup: np.ndarray | None) -> np.ndarray:
        task = BlockTask(key=f"objects-{next(self._keys)}", kind=kind, raw=np.ascontiguousarray(data, np.float32),
                         start=tuple(data_start), image=tuple(frame_shape), target=tuple(zip(*box)),
                         pipeline=self.fingerprint, lookup=lookup)
        future = self.executor.submit(task, self.priority)
        while not wait([future], timeout=STOP_POLL_S).done:
            if self.stopped is not None and self.stopped.is_set():
                self.executor.cancel(future)
                raise LabellingStopped("the frame's labelling was stopped")
        result = future.result()
        if not isinstance(result, np.ndarray) or not self.pipeline.accepts(task, result):
            raise TaskError(f"a worker answered an {kind} task of block {box} with a malformed result")
        return result


class ExecutorRunner:
    """Blocks labelled as tasks on ``executor`` at ``priority`` (lower first)."""

    def __init__(self, executor: Executor, priority: int = 0) -> None:
        self.executor, self.priority = executor, priority

    @contextmanager
    def frame(self, settings: ThresholdSettings, stopped: threading.Event | None = None) -> Iterator[FrameRunner]:
        """The frame's runner; its objects pipeline is registered on the executor while the labelling runs."""
        pipeline = ObjectsPipeline(settings)
        fingerprint = self.executor.add_pipeline(pipeline)
        try:
            yield _ExecutorFrame(self.executor, pipeline, fingerprint, self.priority, stopped)
        finally:
            self.executor.remove_pipeline(fingerprint)
