"""The Executor interface on a Dask cluster (``distributed``): a running scheduler, a LocalCluster, or a batch
cluster started through dask-jobqueue (see :mod:`backend.distributed.dask_clusters`).

Each pipeline goes to every worker once, as a worker plugin named by its fingerprint that also warms the
compiled kernels, and is unregistered (from the scheduler and every worker) once it was removed as often as
added and none of its tasks is pending; tasks travel as our own TASK message (JSON header and raw array
frames) and name that fingerprint in their Dask key, so a worker never computes a block with another
classifier. Tasks go to the scheduler and results come back in batches (:mod:`backend.distributed.dask_batches`).
Dask itself reschedules the tasks of a worker that died, and recomputes a result that died with its worker
before it was fetched. Dask's own protocol pickles task
functions and plugins: only connect to schedulers you trust (as for any Dask cluster).
"""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
from distributed import Client, WorkerPlugin, get_worker

from backend.compute.objects_pipeline import pipeline_from_message
from backend.compute.pipeline import BlockTask, Pipeline
from backend.config import ExecutorConfig
from backend.distributed.dask_batches import TaskBatches
from backend.distributed.executor import Executor, ExecutorStatus, WorkerStatus
from backend.distributed.futures import TaskFuture, settle
from backend.distributed.pipeline_refs import PipelineRefs
from backend.distributed.protocol import Message, decode, encode, task_fields, task_from_message, task_message
from backend.errors import TransientError
from backend.io.chunk_store import read_raw, stored
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


class DaskExecutor(Executor):
    """Block tasks on a Dask cluster through ``client``, sent and fetched in batches
    (:class:`~backend.distributed.dask_batches.TaskBatches`); futures carry ``compute_s`` like the other
    executors."""

    def __init__(self, client: Client, description: str = "", on_close=None,
                 config: ExecutorConfig = ExecutorConfig()):
        self.client, self.description, self._on_close, self.config = client, description, on_close, config
        self._refs = PipelineRefs()
        self._plugins = threading.Lock()  # orders registering and unregistering plugins
        self._lock = threading.Lock()
        self._submitted = 0
        self._batches = TaskBatches(client, compute_block, task_frames, config, self.lost_message)
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
        """Queue ``task`` for the next batch sent to the scheduler (lower values first)."""
        if not self._refs.known(task.pipeline):
            raise ValueError(f"task refers to pipeline {task.pipeline}, which was never added")
        outer = TaskFuture()
        self._refs.task_started(task.pipeline)
        outer.add_done_callback(lambda _: self._refs.task_ended(task.pipeline))
        with self._lock:
            self._submitted += 1
        if not self._batches.queue(task, priority, outer):
            settle(outer, error=TransientError("the Dask executor was closed"))
        return outer

    def lost_message(self) -> str:
        """What to tell the user when the scheduler is gone."""
        return f"lost the Dask scheduler {self.description or self.client.scheduler.address}"

    def cancel(self, future: TaskFuture) -> bool:
        """Withdraw a task (on the cluster with the next batch); its result, if it was already running, is
        dropped. False once it is settled."""
        if not future.cancel():
            return False
        self._batches.withdraw(future)
        return True

    @property
    def batches_sent(self) -> int:
        """How many graph updates (``client.map`` calls) carried the tasks so far."""
        return self._batches.batches_sent

    def status(self) -> ExecutorStatus:
        """The Dask workers (address, threads, memory, tasks; as last asked), queued and finished counts."""
        with self._lock:
            submitted = self._submitted
        batches, since = self._batches, self._no_workers_since
        return ExecutorStatus("dask", self.description, self._workers, queued=batches.pending(),
                              submitted=submitted, done=batches.done, compute_s=round(batches.compute_s, 3),
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
        self._batches.close()
        self.client.close(timeout=10)
        if self._on_close is not None:
            self._on_close()


def task_frames(task: BlockTask) -> list[bytes]:
    """The TASK message of ``task``; with ``raw_ref`` the raw data stays behind and the worker reads it."""
    if task.raw_ref is None:
        return task_message(task)
    return encode("TASK", {**task_fields(task), "raw_ref": task.raw_ref}, [])
