"""The Executor interface on a Dask cluster (``distributed``): a running scheduler, a LocalCluster, or a batch
cluster started through dask-jobqueue (see :mod:`backend.distributed.dask_clusters`).

Each pipeline goes to every worker once, as a worker plugin named by its fingerprint that also warms the
compiled kernels, and is unregistered (from the scheduler and every worker) once it was removed as often as
added and none of its tasks is pending; tasks travel as our own TASK message (JSON header and raw array
frames) and name that fingerprint in their Dask key, so a worker never computes a block with another
classifier. Dask itself reschedules the tasks of a worker that died. Dask's own protocol pickles task
functions and plugins: only connect to schedulers you trust (as for any Dask cluster).
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time

import numpy as np
from distributed import Client, WorkerPlugin, get_worker

from backend.compute.objects_pipeline import pipeline_from_message
from backend.compute.pipeline import BlockTask, Pipeline
from backend.config import ExecutorConfig
from backend.distributed.executor import Executor, ExecutorStatus, WorkerStatus
from backend.distributed.futures import FutureRelay, TaskError, TaskFuture, settle
from backend.distributed.pipeline_refs import PipelineRefs
from backend.distributed.protocol import Message, decode, encode, task_fields, task_from_message, task_message
from backend.errors import TransientError
from backend.io.chunk_store import stored
from backend.processes import keep_freed_memory

log = logging.getLogger(__name__)


def plugin_name(fingerprint: str) -> str:
    """The worker plugin that holds one pipeline."""
    return f"ilastik-pipeline-{fingerprint}"


class PipelinePlugin(WorkerPlugin):
    """One pipeline on one Dask worker, loaded and warmed once; a workspace per worker thread."""

    def __init__(self, fingerprint: str, header: str, arrays: list[np.ndarray]):
        self.name = plugin_name(fingerprint)
        self.fingerprint, self.header, self.arrays = fingerprint, header, arrays
        self.pipeline: Pipeline | None = None
        self._local: threading.local | None = None
        self.sources: dict = {}  # raw data files this worker opened (--shared-filesystem)

    def setup(self, worker) -> None:
        """Build the pipeline and compile its kernels before the first task."""
        from backend.compute.warmup import warm_up

        self.pipeline = pipeline_from_message(json.loads(self.header), self.arrays)
        self._local = threading.local()
        keep_freed_memory()  # Dask's nannies set MALLOC_TRIM_THRESHOLD_=65536: 40 % slower blocks
        warm_up()

    def workspace(self) -> dict:
        """Buffers reused between the blocks of the calling thread."""
        if not hasattr(self._local, "buffers"):
            self._local.buffers = {}
        return self._local.buffers


class ParentWatch(WorkerPlugin):
    """On the worker processes of a LocalCluster: end when the application that started them is gone."""

    name = "ilastik-parent-watch"

    def __init__(self, parent_pid: int, poll_s: float):
        self.parent_pid, self.poll_s = parent_pid, poll_s

    def setup(self, worker) -> None:
        """Start watching (only in processes the application started itself)."""
        import os

        from backend.processes import watch_parent

        if os.getppid() == self.parent_pid:
            watch_parent(self.parent_pid, self.poll_s)


def compute_block(fingerprint: str, frames: list[bytes]) -> tuple[np.ndarray, float]:
    """On a Dask worker: the block's result (or, for a task that names its output, WRITTEN once it is written
    there) and the seconds it computed."""
    plugin = get_worker().plugins.get(plugin_name(fingerprint))
    if plugin is None or plugin.pipeline is None:
        raise KeyError(f"this worker has no pipeline {fingerprint}")
    message = decode(frames)
    reference = message.fields.pop("raw_ref", None)
    if reference is not None:
        message = Message(message.type, message.fields, [read_raw(reference, plugin.sources), *message.arrays])
    task = task_from_message(message)
    started = time.perf_counter()
    values = stored(task, plugin.pipeline.run(task, plugin.workspace()))  # a task naming its output: written here
    return values, time.perf_counter() - started


def read_raw(reference: dict, opened: dict) -> np.ndarray:
    """Raw data (z, y, x, c) a task names by file and region (workers on a shared file system); each file is
    opened once per worker and kept in ``opened``."""
    from backend.compute.geometry import Roi
    from backend.io.sources import open_source

    name = (reference["spec"], reference["axes"])
    if name not in opened:
        try:
            opened[name] = open_source(reference["spec"], axes=reference["axes"])
        except Exception as exc:
            raise OSError(f"worker cannot open {reference['spec']}: {exc}") from None
    return opened[name].read(Roi(tuple(reference["start"]), tuple(reference["stop"])))[0]


class DaskExecutor(Executor):
    """Block tasks on a Dask cluster through ``client``; futures carry ``compute_s`` like the other executors."""

    def __init__(self, client: Client, description: str = "", on_close=None,
                 config: ExecutorConfig = ExecutorConfig()):
        self.client, self.description, self._on_close, self.config = client, description, on_close, config
        self._refs = PipelineRefs()
        self._plugins = threading.Lock()  # orders registering and unregistering plugins
        self._lock = threading.Lock()
        self._relay = FutureRelay()
        self._counter = itertools.count()
        self._submitted = self._done = 0
        self.compute_s = 0.0
        self._workers: tuple[WorkerStatus, ...] = ()
        self._no_workers_since: float | None = time.monotonic()
        self._stop = threading.Event()
        self._wake = threading.Event()  # the poller goes round at once: a release or close
        self._poller = threading.Thread(target=self._poll, name="dask-status", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        """Ask the scheduler for its workers every ``dask_status_s`` (status() never waits on it); unregister the
        plugins of pipelines dropped meanwhile."""
        while not self._stop.is_set():
            self._unregister_dropped()
            self._set_workers(self._ask_scheduler())
            self._wake.wait(self.config.dask_status_s)
            self._wake.clear()

    def _unregister_dropped(self) -> None:
        with self._plugins:
            for fingerprint in self._refs.collect():
                try:
                    self.client.unregister_worker_plugin(plugin_name(fingerprint))
                except Exception as exc:  # the scheduler is gone or never had it: nothing left to remove
                    log.warning("could not unregister the plugin of pipeline %s: %s", fingerprint, exc)

    def _set_workers(self, workers: tuple[WorkerStatus, ...]) -> None:
        self._workers = workers
        if workers:
            self._no_workers_since = None
        elif self._no_workers_since is None:
            self._no_workers_since = time.monotonic()

    def add_pipeline(self, pipeline: Pipeline) -> str:
        """Send the pipeline to every worker (and to workers that join later) as a plugin; a network call the
        first time (call it off the GUI thread), later ones only count."""
        fingerprint = pipeline.fingerprint()
        with self._plugins:
            if self._refs.add(fingerprint):
                header, arrays = pipeline.to_message()
                try:
                    self.client.register_plugin(PipelinePlugin(fingerprint, json.dumps(header), arrays))
                except BaseException:
                    self._refs.release(fingerprint)
                    raise
        return fingerprint

    def remove_pipeline(self, fingerprint: str) -> None:
        """Give back a reference; with the last one (and its tasks settled) the plugin is unregistered."""
        self._refs.release(fingerprint)
        self._wake.set()

    def submit(self, task: BlockTask, priority: int = 0) -> TaskFuture:
        """Queue ``task`` on the scheduler (lower values first; Dask runs higher priorities first)."""
        if not self._refs.known(task.pipeline):
            raise ValueError(f"task refers to pipeline {task.pipeline}, which was never added")
        outer = TaskFuture()
        self._refs.task_started(task.pipeline)
        outer.add_done_callback(lambda _: self._refs.task_ended(task.pipeline))
        with self._lock:
            self._submitted += 1
        _Sending(self, task, priority, outer).send()
        return outer

    def _finished(self, outer: TaskFuture, inner, send, sends: int) -> None:
        if inner.status == "lost" and not outer.done() and sends <= self.config.dask_lost_resends:
            # It had finished, but the worker holding its result died before this callback ran (more likely
            # the faster blocks are): send it again under a new key.
            send()
            return
        self._relay.detach(outer)
        with self._lock:
            self._done += 1
        if outer.done():
            return
        if inner.status == "finished":
            self._relay.relay(outer, lambda: self._fetched(inner.result), lambda result: self._unpacked(outer, result))
        elif inner.status == "cancelled" and self.client.status == "running":
            outer.cancel()
        elif inner.status == "cancelled":  # not by us: the scheduler went away
            settle(outer, error=TransientError(self.lost_message()))
        elif inner.status == "lost":
            settle(outer, error=TransientError(f"the block's result was lost with its worker {sends} times"))
        else:
            self._relay.relay(outer, lambda: _task_error(self._fetched(inner.exception)))

    def _fetched(self, read):
        """``read()`` from the cluster; a cluster that no longer answers is a TransientError (try again later)."""
        try:
            return read()
        except Exception as exc:
            raise TransientError(f"{self.lost_message()} ({type(exc).__name__}: {str(exc)[:200]})") from None

    def _unpacked(self, outer: TaskFuture, result) -> np.ndarray:
        values, outer.compute_s = result
        with self._lock:
            self.compute_s += outer.compute_s
        return values

    def lost_message(self) -> str:
        """What to tell the user when the scheduler is gone."""
        return f"lost the Dask scheduler {self.description or self.client.scheduler.address}"

    def cancel(self, future: TaskFuture) -> bool:
        """Withdraw a task; its result, if it was already running, is dropped. False once it is settled.

        The caller's future is cancelled before the cluster's: cancelling the cluster's first released a result
        that a completion callback might be reading at that moment, which settled the caller's future with a
        "lost the scheduler" error instead."""
        if not future.cancel():
            return False
        inner = self._relay.detach(future)
        if inner is not None:
            inner.cancel()
        return True

    def status(self) -> ExecutorStatus:
        """The Dask workers (address, threads, memory, tasks; as last asked), queued and finished counts."""
        with self._lock:
            submitted, done, compute_s = self._submitted, self._done, self.compute_s
        since = self._no_workers_since
        return ExecutorStatus("dask", self.description, self._workers, queued=self._relay.pending(),
                              submitted=submitted, done=done, compute_s=round(compute_s, 3),
                              no_workers_s=round(time.monotonic() - since, 1) if since is not None else 0.0)

    def _ask_scheduler(self) -> tuple[WorkerStatus, ...]:
        try:
            info = self.client.scheduler_info(n_workers=-1)
        except Exception:  # the scheduler is gone or slow: show no workers
            return ()
        workers = []
        for address, w in sorted(info.get("workers", {}).items()):
            metrics = w.get("metrics", {})
            executing = int(metrics.get("executing", 0))
            workers.append(WorkerStatus(address, address, int(w.get("nthreads", 1)), "busy" if executing else "idle",
                                        kind="dask", version="dask", in_flight=executing,
                                        memory_mb=round(metrics.get("memory", 0) / 2**20),
                                        memory_limit_mb=round((w.get("memory_limit") or 0) / 2**20)))
        return tuple(workers)

    def wait_for_workers(self, processes: int, timeout: float) -> bool:
        """Block until the cluster has workers with at least ``processes`` threads."""
        deadline = time.monotonic() + timeout
        while True:
            workers = self._ask_scheduler()
            if sum(w.processes for w in workers) >= processes:
                self._set_workers(workers)  # status() counts them now (exports size their queue on it)
                return True
            if self._stop.wait(min(0.2, max(0.0, deadline - time.monotonic()))) or time.monotonic() >= deadline:
                return False

    def close(self) -> None:
        """Withdraw what is pending, stop polling, close the client (and the cluster we started)."""
        self._stop.set()
        self._wake.set()
        self._poller.join(timeout=15)
        for inner in self._relay.drain():
            inner.cancel()
        self.client.close(timeout=10)
        if self._on_close is not None:
            self._on_close()


class _Sending:
    """One task on its way to the cluster, sent again under a new key when its result is lost. No reference
    cycle: the cluster's future holds this, this holds the caller's future (which holds the caller's state),
    so everything is freed as soon as the cluster's future is, not at the next garbage collection."""

    def __init__(self, executor: DaskExecutor, task: BlockTask, priority: int, outer: TaskFuture):
        self.executor, self.task, self.priority, self.outer = executor, task, priority, outer
        self.frames = task_frames(task)
        self.sends = 0

    def send(self) -> None:
        """Submit the task (again) to the cluster."""
        executor, task, outer = self.executor, self.task, self.outer
        self.sends += 1
        key = f"ilastik-{task.pipeline}-{task.kind}-{task.key}-{next(executor._counter)}"
        try:
            inner = executor.client.submit(compute_block, task.pipeline, self.frames, key=key,
                                           priority=-self.priority, pure=False, retries=1)
        except Exception as exc:  # the client is closed or the scheduler gone
            executor._relay.detach(outer)
            settle(outer, error=TransientError(f"{executor.lost_message()} ({type(exc).__name__}: {exc})"))
            return
        executor._relay.attach(outer, inner)  # replaces (and so releases) a lost one
        sends = self.sends
        inner.add_done_callback(lambda f: executor._finished(outer, f, self.send, sends))


def _task_error(error: BaseException) -> None:
    """Raise a failed Dask task's error as a TaskError (its remote traceback stays on the worker)."""
    raise TaskError(f"{type(error).__name__}: {error}"[:1000])


def task_frames(task: BlockTask) -> list[bytes]:
    """The TASK message of ``task``; with ``raw_ref`` the raw data stays behind and the worker reads it."""
    if task.raw_ref is None:
        return task_message(task)
    return encode("TASK", {**task_fields(task), "raw_ref": task.raw_ref}, [])
