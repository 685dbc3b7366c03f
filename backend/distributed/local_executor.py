"""The Executor on local processes: a process pool that loads pipelines from files, never from pickles."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import lz4.frame
import numpy as np

from backend.compute.pipeline import BlockTask, Pipeline
from backend.config import WorkerConfig
from backend.distributed.executor import Executor, ExecutorStatus, WorkerStatus, default_workers
from backend.distributed.futures import FutureRelay, TaskError, TaskFuture, settle
from backend.distributed.pipeline_folder import PipelineFolder

_worker_pipelines: dict[str, Pipeline] = {}
_worker_buffers: dict = {}


def _run_task(task: BlockTask, folder: str) -> tuple[tuple[bytes, tuple[int, ...], str], float]:
    started = time.perf_counter()
    pipeline = _worker_pipelines.get(task.pipeline)
    if pipeline is None:
        path = os.path.join(folder, task.pipeline + ".npz")
        if not os.path.exists(path):
            raise KeyError(f"unknown pipeline {task.pipeline}")
        pipeline = _worker_pipelines[task.pipeline] = Pipeline.load(path)
    result = pipeline.run(task, _worker_buffers)
    return _pack(result), time.perf_counter() - started


def _pack(result: np.ndarray) -> tuple[bytes, tuple[int, ...], str]:
    """A result as lz4 for the pool's pipe: an 8 MB block of probabilities took 15 ms to pass it raw and
    2 ms as lz4 (1 ms to compress), most of it saved in the worker process that shares the cores."""
    data = np.ascontiguousarray(result)
    return lz4.frame.compress(data, compression_level=0), data.shape, data.dtype.str


def _unpack(packed: tuple[bytes, tuple[int, ...], str]) -> np.ndarray:
    """Inverse of :func:`_pack` (a writable array)."""
    data, shape, dtype = packed
    return np.frombuffer(lz4.frame.decompress(data, return_bytearray=True), np.dtype(dtype)).reshape(shape)


def _warm_up_process(warmed, parent_pid: int, poll_s: float) -> None:
    """Initialise one compute process: end with the process that owns the pool, leave Ctrl-C and SIGTERM to it
    (a process killed while it writes a result would leave the pool's reader waiting forever), warm up."""
    from backend.compute.warmup import warm_up
    from backend.processes import keep_freed_memory, watch_parent

    watch_parent(parent_pid, poll_s)
    keep_freed_memory()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the owner stops the pool; no tracebacks from here
    warm_up()
    warmed.release()


def _started() -> None:
    """A no-op task: submitting one per worker makes the pool start (and warm up) all its processes."""


class LocalExecutor(Executor):
    """Runs block tasks in ``workers`` local processes; pipelines are handed over as files, not pickles.

    Each returned future carries ``compute_s``, the seconds its task computed in the worker process. At
    close, running tasks get the configuration's ``stop_grace_s`` before their processes are killed.
    """

    def __init__(self, pipeline: Pipeline | None = None, workers: int | None = None,
                 config: WorkerConfig = WorkerConfig()):
        self.workers = workers or default_workers()
        self.config = config
        self._folder = PipelineFolder()  # removes the folders of killed executors first
        self._known: set[str] = set()
        self._pool = self._new_pool()
        for _ in range(self.workers):
            self._pool.submit(_started)
        self._submitted = 0
        self._done = 0
        self.compute_s = 0.0
        self._lock = threading.Lock()
        self._relay = FutureRelay()
        self.fingerprint = self.add_pipeline(pipeline) if pipeline is not None else None

    def _new_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        self._warmed, self._ready = context.Semaphore(0), 0
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=context, initializer=_warm_up_process,
                                   initargs=(self._warmed, os.getpid(), self.config.parent_poll_s))

    def wait_ready(self, timeout: float) -> bool:
        """Wait until every worker process has started and warmed up; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while self._ready < self.workers:
            if not self._warmed.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return False
            self._ready += 1
        return True

    @property
    def pipelines(self) -> frozenset[str]:
        """Fingerprints of the pipelines added so far."""
        return frozenset(self._known)

    def add_pipeline(self, pipeline: Pipeline) -> str:
        """Store the pipeline where the worker processes load it on first use."""
        fingerprint = pipeline.fingerprint()
        if fingerprint not in self._known:
            self._folder.save(pipeline, fingerprint)
            self._known.add(fingerprint)
        return fingerprint

    def submit(self, task: BlockTask, priority: int = 0) -> TaskFuture:
        """Queue a task for the pool (the pool runs tasks in submission order)."""
        if task.pipeline not in self._known:
            raise ValueError(f"task refers to pipeline {task.pipeline}, which was never added")
        if self._pool is None:
            closed = TaskFuture()
            settle(closed, error=TaskError("executor closed"))
            return closed
        with self._lock:
            self._submitted += 1
        try:
            inner = self._pool.submit(_run_task, task, self._folder.path)
        except BrokenProcessPool:  # a worker process died (killed, out of memory): start fresh ones
            _end_pool(self._pool, grace_s=0.0)
            self._pool = self._new_pool()
            inner = self._pool.submit(_run_task, task, self._folder.path)
        outer = TaskFuture()
        self._relay.attach(outer, inner)
        inner.add_done_callback(lambda f: self._finished(outer, f))
        return outer

    def _finished(self, outer: TaskFuture, inner: Future) -> None:
        self._relay.detach(outer)
        with self._lock:
            self._done += 1
        error = None if inner.cancelled() else inner.exception()
        if error is not None:  # passed on as it is: raising it here would chain this frame to it
            settle(outer, error=error)
        else:
            self._relay.relay(outer, inner.result, lambda packed: self._unpacked(outer, packed))

    def _unpacked(self, outer: TaskFuture, packed) -> np.ndarray:
        values, outer.compute_s = _unpack(packed[0]), packed[1]
        with self._lock:
            self.compute_s += outer.compute_s
        return values

    def cancel(self, future: TaskFuture) -> bool:
        """Cancel a task that has not started."""
        inner = self._relay.inner(future)
        if inner is None or not inner.cancel():
            return future.cancelled()
        return future.cancel()

    def wait_for_workers(self, processes: int, timeout: float) -> bool:
        """Wait until ``processes`` (at most all) of the pool's processes have started and warmed up."""
        return self.wait_ready(timeout) if processes > 0 else True

    def status(self) -> ExecutorStatus:
        """The pool as one worker, submitted and finished task counts, summed compute seconds."""
        with self._lock:
            submitted, done, compute_s = self._submitted, self._done, self.compute_s
        state = "busy" if self._relay.pending() else "idle"
        worker = WorkerStatus("localhost", "process pool", self.workers, state, kind="local",
                              in_flight=self._relay.pending(), blocks_done=done)
        return ExecutorStatus("local", None, (worker,), queued=self._relay.pending(), submitted=submitted,
                              done=done, compute_s=round(compute_s, 3))

    def close(self) -> None:
        """Cancel what is queued, give running tasks their grace time, end the processes, delete the files."""
        if self._pool is None:
            return
        # The manager thread gets its time here only, not where submit replaces a broken pool (the worker's
        # loop waits there).
        _end_pool(self._pool, self.config.stop_grace_s, manager_s=self.config.stop_grace_s / 2)
        self._pool = self._warmed = None  # the last references: the semaphores are unlinked now
        self._folder.remove()



def _end_pool(pool: ProcessPoolExecutor, grace_s: float, manager_s: float = 0.0) -> None:
    """Shut ``pool`` down without waiting on its manager thread (which a process killed while writing a result
    leaves blocked for good): join its processes for ``grace_s`` seconds, then kill what is left. Then give the
    manager thread up to ``manager_s`` seconds to close the pool's queues: their 5 semaphores are unlinked only
    when it lets go of them, and a process that leaves with ``os._exit`` right after (the worker does) would
    otherwise leave them to the resource tracker's "leaked semaphore objects" warning."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # the pool's own; gone after shutdown
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(1.0)
    if manager is not None and manager_s > 0:
        manager.join(manager_s)
