"""The Executor on local processes: a process pool that loads pipelines from files, never from pickles."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import lz4.frame
import numpy as np

from backend.compute.objects_pipeline import load_pipeline
from backend.compute.pipeline import BlockTask, Pipeline
from backend.config import WorkerConfig
from backend.distributed.executor import Executor, ExecutorStatus, WorkerStatus, default_workers
from backend.distributed.futures import FutureRelay, TaskError, TaskFuture, settle
from backend.distributed.pipeline_folder import PipelineFolder
from backend.distributed.pipeline_refs import PipelineRefs
from backend.errors import TransientError
from backend.io.chunk_store import stored, with_raw

log = logging.getLogger(__name__)
_worker_pipelines: OrderedDict[str, Pipeline] = OrderedDict()  # in a compute process: the last ones used
_worker_buffers: dict = {}
_worker_sources: dict = {}  # in a compute process: the raw data files tasks named, opened once
_slot: tuple | None = None  # in a compute process: (the pool's deadlines, this process's index in them)


@dataclass(frozen=True)
class Slots:
    """Shared with a pool's compute processes: each one's pid, the deadline of the task it runs (0: idle) and
    when it last showed it is alive, on the monotonic clock (one clock for all processes on Linux)."""

    deadlines: object  # multiprocessing RawArray of doubles
    alive: object  # multiprocessing RawArray of doubles
    pids: object  # multiprocessing RawArray of ints
    taken: object  # multiprocessing Value: how many processes took a slot

    @classmethod
    def create(cls, context, count: int) -> Slots:
        """Slots for ``count`` processes, all idle."""
        return cls(context.RawArray("d", count), context.RawArray("d", count), context.RawArray("i", count),
                   context.Value("i", 0))

    def take(self) -> int | None:
        """In a compute process: claim the next slot for this process; None if all are taken."""
        with self.taken.get_lock():
            index = self.taken.value
            self.taken.value += 1
        if index >= len(self.pids):
            return None
        self.pids[index] = os.getpid()
        self.alive[index] = time.monotonic()
        return index

    def stuck(self, now: float, silence_s: float) -> list[tuple[int, str]]:
        """The processes past their task's deadline or silent for ``silence_s`` (frozen): (pid, which), each
        reported once."""
        found = []
        for index, pid in enumerate(self.pids):
            deadline, alive = self.deadlines[index], self.alive[index]
            if pid and deadline and now > deadline:
                found.append((pid, "is past its task's deadline"))
            elif pid and alive and now - alive > silence_s:
                found.append((pid, f"has not run for {now - alive:.0f} s (stopped or frozen)"))
            else:
                continue
            self.deadlines[index] = self.alive[index] = 0.0
        return found


def _run_task(task: BlockTask, folder: str, deadline_s: float,
              kept: int) -> tuple[tuple[bytes, tuple[int, ...], str], float]:
    """In a compute process: compute ``task`` with its pipeline (loaded from ``folder`` on first use; the
    ``kept`` last used stay loaded); killed by the owner past ``deadline_s``."""
    started = time.perf_counter()
    if _slot is not None:
        _slot[0][_slot[1]] = time.monotonic() + deadline_s
    try:
        pipeline = _worker_pipelines.get(task.pipeline)
        if pipeline is None:
            path = os.path.join(folder, task.pipeline + ".npz")
            if not os.path.exists(path):
                raise KeyError(f"unknown pipeline {task.pipeline}")
            pipeline = _worker_pipelines[task.pipeline] = load_pipeline(path)
        _worker_pipelines.move_to_end(task.pipeline)
        while len(_worker_pipelines) > kept:
            _worker_pipelines.popitem(last=False)
        task = with_raw(task, _worker_sources)  # a task naming its raw data's file: read here
        result = stored(task, pipeline.run(task, _worker_buffers))  # a task naming its output: written here
        return _pack(result), time.perf_counter() - started
    finally:
        if _slot is not None:
            _slot[0][_slot[1]] = 0.0


def _pack(result: np.ndarray) -> tuple[bytes, tuple[int, ...], str]:
    """A result as lz4 for the pool's pipe: an 8 MB block of probabilities took 15 ms to pass it raw and
    2 ms as lz4 (1 ms to compress), most of it saved in the worker process that shares the cores."""
    data = np.ascontiguousarray(result)
    return lz4.frame.compress(data, compression_level=0), data.shape, data.dtype.str


def _unpack(packed: tuple[bytes, tuple[int, ...], str]) -> np.ndarray:
    """Inverse of :func:`_pack` (a writable array)."""
    data, shape, dtype = packed
    return np.frombuffer(lz4.frame.decompress(data, return_bytearray=True), np.dtype(dtype)).reshape(shape)


def _warm_up_process(warmed, parent_pid: int, poll_s: float, slots: Slots) -> None:
    """Initialise one compute process: end with the process that owns the pool, leave Ctrl-C and SIGTERM to it
    (a process killed while it writes a result would leave the pool's reader waiting forever), take its slot
    (where its task's deadline is posted), warm up."""
    from backend.compute.warmup import warm_up
    from backend.processes import keep_freed_memory, watch_parent

    global _slot
    index = slots.take()
    _slot = (slots.deadlines, index) if index is not None else None

    def show_alive() -> None:
        slots.alive[index] = time.monotonic()

    watch_parent(parent_pid, poll_s, on_poll=show_alive if index is not None else None)
    keep_freed_memory()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the owner stops the pool; no tracebacks from here
    warm_up()
    warmed.release()


def _started() -> None:
    """A no-op task: submitting one per worker makes the pool start (and warm up) all its processes."""


class LocalExecutor(Executor):
    """Runs block tasks in ``workers`` local processes; pipelines are handed over as files, not pickles.

    A pipeline's file is deleted once it was removed as often as added and none of its tasks is pending;
    each compute process keeps the configuration's ``pipelines_kept`` last used pipelines loaded.

    Each returned future carries ``compute_s``, the seconds its task computed in the worker process. A compute
    process still busy with a task past the task's deadline (``deadline_s`` of :meth:`submit`, default the
    configuration's ``task_deadline_s``) is killed: frozen or hung, it would hold its place for good; so is one
    that has not shown it runs (every ``parent_poll_s``) for ``compute_silence_s`` (stopped, frozen). That ends
    the pool, whose tasks all fail as transient errors (to be retried); the next task starts a new pool. At
    close, running tasks get the configuration's ``stop_grace_s`` before their processes are killed.
    """

    def __init__(self, pipeline: Pipeline | None = None, workers: int | None = None,
                 config: WorkerConfig = WorkerConfig()):
        self.workers = workers or default_workers()
        self.config = config
        self._folder = PipelineFolder()  # removes the folders of killed executors first
        self._refs = PipelineRefs()
        self._pool = self._new_pool()
        for _ in range(self.workers):
            self._pool.submit(_started)
        self._submitted = 0
        self._done = 0
        self.compute_s = 0.0
        self._lock = threading.Lock()
        self._relay = FutureRelay()
        self.killed = 0  # compute processes killed over their task's deadline
        self._closing = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="compute-deadlines", daemon=True)
        self._watchdog.start()
        self.fingerprint = self.add_pipeline(pipeline) if pipeline is not None else None

    def _new_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        self._warmed, self._ready = context.Semaphore(0), 0
        self._slots = Slots.create(context, self.workers)
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=context, initializer=_warm_up_process,
                                   initargs=(self._warmed, os.getpid(), self.config.parent_poll_s, self._slots))

    def _watch(self) -> None:
        """Kill compute processes past their task's deadline (see the class docstring)."""
        while not self._closing.wait(self.config.deadline_check_s):
            for pid, why in self._slots.stuck(time.monotonic(), self.config.compute_silence_s):
                log.warning("a compute process (pid %d) %s: killing it", pid, why)
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.killed += 1
                except ProcessLookupError:
                    pass

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
        """Fingerprints of the pipelines tasks may refer to now."""
        self._collect()
        return self._refs.fingerprints()

    def add_pipeline(self, pipeline: Pipeline) -> str:
        """Store the pipeline where the worker processes load it on first use."""
        fingerprint = pipeline.fingerprint()
        self._collect()
        if self._refs.add(fingerprint):
            self._folder.save(pipeline, fingerprint)
        return fingerprint

    def remove_pipeline(self, fingerprint: str) -> None:
        """Give back a reference; the pipeline's file goes with the last one (see the class docstring)."""
        self._refs.release(fingerprint)

    def _collect(self) -> None:
        for fingerprint in self._refs.collect():
            self._folder.delete(fingerprint)

    def submit(self, task: BlockTask, priority: int = 0, deadline_s: float | None = None) -> TaskFuture:
        """Queue a task for the pool (the pool runs tasks in submission order); its compute process is killed
        if it computes it for longer than ``deadline_s`` (default: the configuration's ``task_deadline_s``)."""
        self._collect()
        if not self._refs.known(task.pipeline):
            raise ValueError(f"task refers to pipeline {task.pipeline}, which was never added")
        if self._pool is None:
            closed = TaskFuture()
            settle(closed, error=TaskError("executor closed"))
            return closed
        with self._lock:
            self._submitted += 1
        arguments = (task, self._folder.path, self.config.task_deadline_s if deadline_s is None else deadline_s,
                     int(self.config.pipelines_kept))
        try:
            inner = self._pool.submit(_run_task, *arguments)
        except BrokenProcessPool:  # a worker process died (killed, out of memory): start fresh ones
            _end_pool(self._pool, grace_s=0.0)
            self._pool = self._new_pool()
            inner = self._pool.submit(_run_task, *arguments)
        outer = TaskFuture()
        self._refs.task_started(task.pipeline)
        self._relay.attach(outer, inner)
        inner.add_done_callback(lambda f: self._finished(outer, f, task.pipeline))
        return outer

    def _finished(self, outer: TaskFuture, inner: Future, fingerprint: str) -> None:
        self._refs.task_ended(fingerprint)
        self._collect()
        self._relay.detach(outer)
        with self._lock:
            self._done += 1
        error = None if inner.cancelled() else inner.exception()
        if isinstance(error, BrokenProcessPool):
            error = TransientError("a compute process ended while this task was queued or running (killed, "
                                   "out of memory, or past a task's deadline); the task can be retried")
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
        self._closing.set()
        self._watchdog.join(timeout=10)
        # The manager thread gets its time here only, not where submit replaces a broken pool (the worker's
        # loop waits there).
        _end_pool(self._pool, self.config.stop_grace_s, manager_s=self.config.stop_grace_s / 2)
        self._pool = self._warmed = self._slots = None  # the last references: the semaphores are unlinked now
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
