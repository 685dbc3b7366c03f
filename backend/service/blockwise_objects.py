"""Objects of a frame larger than memory: labelled block by block, identical to ``threshold_frame``.

Pass 1 reads each block with its smoothing halo, labels it on its own and keeps a small summary
(``backend.compute.object_blocks``); the summaries are merged into the frame's components and IDs;
pass 2 reads each block again, labels it again (the same way) and maps its local labels to the final
IDs before handing it to the writer. Memory is bounded by the blocks in flight (at most
``threads + 1`` at a time), never by the frame.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from backend.compute.object_blocks import (
    BlockSummary,
    Box,
    FrameMerge,
    Index,
    block_boxes,
    default_block_shape,
    halo_box,
    smoothing_halo,
)
from backend.compute.threshold import ThresholdSettings
from backend.config import ObjectsConfig
from backend.distributed.futures import settle
from backend.errors import TransientError
from backend.service.object_runners import BlockRunner, LocalRunner

ReadBox = Callable[[Index, Index], np.ndarray]
WriteBox = Callable[[Index, np.ndarray], None]
Progress = Callable[[int, int], None]
Result = TypeVar("Result")


@dataclass(frozen=True)
class FrameLabelling:
    """What labelling a frame gave: the highest ID, the objects kept and the labels' dtype."""

    max_id: int
    object_count: int
    dtype: np.dtype  # uint32, or uint64 when max_id exceeds 2**32 - 1
    block_shape: Index
    blocks: int


def label_frame_blockwise(read_box: ReadBox, frame_shape: Index, settings: ThresholdSettings, write_box: WriteBox,
                          block_shape: Index | None = None, threads: int = 2, progress: Progress | None = None,
                          runner: BlockRunner | None = None, stopped: threading.Event | None = None) -> FrameLabelling:
    """Label one (z, y, x) frame's objects block by block, bit for bit as ``threshold_frame`` labels it whole.

    ``read_box(start, stop)`` returns the float32 (z, y, x, channels) probabilities of a box inside the
    frame (it is called from ``threads`` worker threads at once); ``write_box(start, labels)`` receives
    each block's final labels (from the calling thread, blocks in any order); ``progress(done, total)``
    counts blocks over both passes. ``runner`` computes the passes (default: in these threads; an
    :class:`~backend.service.object_runners.ExecutorRunner` sends them to workers, ``threads`` then bounds the
    blocks in flight); ``stopped`` set gives up its blocks waiting on the executor. An exception in any block
    fails the call once the threads are joined.
    """
    frame_shape = tuple(int(n) for n in frame_shape)
    if len(frame_shape) != 3 or min(frame_shape) < 1:
        raise ValueError(f"frame shape {frame_shape} must be three positive sizes (z, y, x)")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    block_shape = tuple(int(n) for n in (block_shape or default_block_shape(frame_shape)))
    boxes = block_boxes(frame_shape, block_shape)
    halo = smoothing_halo(frame_shape, settings.sigmas)
    ticks = _Ticks(2 * len(boxes), progress)

    def read(box: Box) -> tuple[np.ndarray, Index]:
        start, stop = halo_box(box, halo, frame_shape)
        data = read_box(start, stop)
        expected = tuple(b - a for a, b in zip(start, stop))
        if data.ndim != 4 or data.shape[:3] != expected:
            raise ValueError(f"read_box{(start, stop)} gave shape {data.shape}, expected {expected} + (channels,)")
        return data, start

    merge = FrameMerge(settings.method == 1)

    def add(summary: BlockSummary) -> None:
        merge.add(summary)
        ticks.step()

    with (runner or LocalRunner()).frame(settings, stopped) as blocks, \
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="objects-block") as pool:

        def first_pass(index: Index) -> BlockSummary:
            data, start = read(boxes[index])
            return blocks.summary(index, data, start, boxes[index], frame_shape)

        _drain(_bounded(pool, first_pass, list(boxes), threads + 1), add)
        ids = merge.finish(settings)

        def second_pass(index: Index) -> tuple[Index, np.ndarray]:
            data, start = read(boxes[index])
            return index, blocks.labels(data, start, boxes[index], frame_shape, ids.lookup(index))

        def write(result: tuple[Index, np.ndarray]) -> None:
            index, labels = result
            write_box(boxes[index][0], labels)
            ticks.step()

        _drain(_bounded(pool, second_pass, list(boxes), threads + 1), write)
    return FrameLabelling(ids.max_id, ids.object_count, ids.dtype, block_shape, len(boxes))


class _Ticks:
    """Counts finished blocks for the progress callback."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.done, self.total, self.progress = 0, total, progress

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def _drain(results: Iterator[Result], consume: Callable[[Result], object]) -> None:
    """Consume every result; on any exception the generator is closed (its pending blocks cancelled)."""
    try:
        for result in results:
            consume(result)
    finally:
        results.close()


def _bounded(pool: ThreadPoolExecutor, task: Callable[[Index], Result], items: list[Index],
             window: int) -> Iterator[Result]:
    """``task`` of every item on the pool, at most ``window`` submitted at once, yielded as they finish."""
    pending: set[Future] = set()
    queue = iter(items)
    try:
        while True:
            for item in queue:
                pending.add(pool.submit(task, item))
                if len(pending) >= window:
                    break
            if not pending:
                return
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield future.result()
    finally:
        for future in pending:
            future.cancel()


class FrameJob:
    """One frame labelled blockwise on a background thread; each block's final labels as a future.

    :meth:`block` may be asked before or after the block is written: a future resolves with the labels
    ``(z, y, x, 1)`` of the block starting there, or fails with the labelling's error. A block nobody has
    asked for yet keeps its labels until the job ends; one asked for is forgotten once written (asked for
    again while the job runs, it fails with a TransientError). ``on_end(job)`` is called once the thread is done.
    ``dtype`` is the labels' (a frame needing a wider one fails), None for the one the frame's merge decides.
    ``runner`` computes the blocks' passes (default: the job's threads; the gateway's executor for the layer);
    :meth:`stop` also gives up the blocks waiting on it.
    """

    def __init__(self, read_box: ReadBox, frame_shape: Index, settings: ThresholdSettings, block_shape: Index,
                 dtype: np.dtype | type | None = np.uint32, threads: int = 2,
                 on_end: Callable[[FrameJob], None] | None = None, runner: BlockRunner | None = None) -> None:
        self.frame_shape, self.block_shape = tuple(frame_shape), tuple(block_shape)
        self.dtype = None if dtype is None else np.dtype(dtype)
        self._read_box, self._settings, self._threads, self._on_end = read_box, settings, threads, on_end
        self._runner = runner
        self._futures: dict[Index, Future] = {}  # blocks not handed over yet
        self._asked: set[Index] = set()
        self._delivered: set[Index] = set()  # handed over once written: the job keeps no labels of its own
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="objects-frame", daemon=True)

    def start(self) -> FrameJob:
        """Start labelling; returns the job."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop labelling: no block is read any more and every block not written yet fails."""
        self._stopped.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the labelling thread to end."""
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        """True while the labelling thread runs."""
        return self._thread.is_alive()

    def block(self, start: Index) -> Future:
        """The future of the labels of the block starting at ``start`` (a corner of the job's block grid)."""
        if any(s % b for s, b in zip(start, self.block_shape)) or any(s >= n for s, n in zip(start, self.frame_shape)):
            raise ValueError(f"{tuple(start)} is not the start of a block {self.block_shape} of {self.frame_shape}")
        start = tuple(start)
        with self._lock:
            if start not in self._delivered:
                self._asked.add(start)
                return self._futures.setdefault(start, Future())
        delivered: Future = Future()
        settle(delivered, error=TransientError(f"the labels of block {start} were handed over already and are not "
                                               "kept: ask again once the frame's labelling has ended"))
        return delivered

    def _write(self, start: Index, labels: np.ndarray) -> None:
        if self.dtype is not None and labels.dtype != self.dtype:
            raise ValueError(f"the frame has more objects than {self.dtype} labels hold")
        start = tuple(start)
        with self._lock:
            future = self._futures.setdefault(start, Future())
            if start in self._asked:  # its asker holds the labels now: memory follows the blocks not yet asked for
                del self._futures[start]
                self._delivered.add(start)
        settle(future, result=labels[..., None])

    def _run(self) -> None:
        try:
            label_frame_blockwise(self._read, self.frame_shape, self._settings, self._write, self.block_shape,
                                  self._threads, runner=self._runner, stopped=self._stopped)
        except Exception as exc:  # a block failed (its probabilities, the parameters): every block fails with it
            self._fail(exc)
        finally:
            if self._on_end is not None:
                self._on_end(self)

    def _read(self, start: Index, stop: Index) -> np.ndarray:
        if self._stopped.is_set():
            raise FrameJobStopped("the frame's labelling was stopped")
        return self._read_box(start, stop)

    def _fail(self, error: Exception) -> None:
        with self._lock:
            for start in block_boxes(self.frame_shape, self.block_shape).values():
                if start[0] not in self._delivered:
                    self._futures.setdefault(start[0], Future())
            futures = list(self._futures.values())
        for future in futures:
            settle(future, error=error)


class FrameJobStopped(RuntimeError):
    """A frame's labelling was stopped before it ended (its owner closed)."""


class FrameJobs:
    """The frame labellings running for one owner (a gateway), by key; :meth:`stop` and :meth:`join` end them."""

    def __init__(self, stop_s: float = ObjectsConfig().stop_s) -> None:
        self.stop_s = stop_s
        self._jobs: dict[str, FrameJob] = {}
        self._lock = threading.Lock()
        self._stopped = False

    def job(self, key: str, make: Callable[[Callable[[FrameJob], None]], FrameJob]) -> tuple[FrameJob, bool]:
        """The running job under ``key``, or a new one ``make(on_end)`` (not started; True with it). A job made
        after :meth:`stop` is stopped already: started, it ends at once and its blocks fail."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None:
                return job, False

            def forget(ended: FrameJob) -> None:
                with self._lock:
                    if self._jobs.get(key) is ended:
                        del self._jobs[key]

            job = self._jobs[key] = make(forget)
            if self._stopped:
                job.stop()
            return job, True

    def running(self) -> list[FrameJob]:
        """The jobs not ended yet."""
        with self._lock:
            return list(self._jobs.values())

    def stop(self) -> None:
        """Stop every job, and any made from now on (returns at once)."""
        with self._lock:
            self._stopped = True
            jobs = list(self._jobs.values())
        for job in jobs:
            job.stop()

    def join(self) -> bool:
        """Wait up to ``stop_s`` in all for the stopped jobs' threads; True if every one ended."""
        deadline = time.monotonic() + self.stop_s
        jobs = self.running()
        for job in jobs:
            job.join(max(0.0, deadline - time.monotonic()))
        return not any(job.is_alive() for job in jobs)
