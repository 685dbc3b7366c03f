"""In-memory fakes of the block cache and the executor, with a clock the test moves.

They keep the contracts of :class:`backend.cache.block_cache.BlockCache` and of
:class:`backend.distributed.executor.Executor` (tests/contract/ runs the same tests on the fakes and on the
real parts), so gateway and roster behaviour can be tested in milliseconds and races ordered by hand:
notices are held until the test delivers them, tasks finish when the test says so, and leases expire when
the test moves the clock.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from backend.cache.block_cache import CACHED, CLAIMED, FAILED, HELD
from backend.compute.objects_pipeline import ObjectsPipeline
from backend.compute.pipeline import BlockTask, Pipeline
from backend.config import CacheConfig
from backend.distributed.executor import Executor, ExecutorStatus, WorkerStatus
from backend.distributed.futures import TaskError, TaskFuture, settle
from backend.distributed.pipeline_refs import PipelineRefs


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


# -- the cache ---------------------------------------------------------------------------------------------
@dataclass
class _Lease:
    token: str
    expires: float


class FakeListener:
    """What :meth:`FakeCache.listen` returns: subscribed at once; stopped with :meth:`stop`."""

    def __init__(self, cache: FakeCache, on_notice, on_lost, on_back):
        self.cache, self.on_notice, self.on_lost, self.on_back = cache, on_notice, on_lost, on_back
        self.subscribed = threading.Event()
        self.subscribed.set()

    def stop(self) -> None:
        """Hear no more notices."""
        self.cache.listeners.remove(self)
        self.subscribed.clear()


class FakeCache:
    """A BlockCache in memory. Notices are delivered at once (``immediate``) or when the test calls
    :meth:`deliver` (then in the order the test chooses)."""

    def __init__(self, clock: Callable[[], float] | None = None, config: CacheConfig = CacheConfig(),
                 immediate: bool = True):
        self.clock = clock or FakeClock()
        self.config, self.immediate = config, immediate
        self.values: dict[str, np.ndarray] = {}
        self.errors: dict[str, tuple[str, float]] = {}
        self.leases: dict[str, _Lease] = {}
        self.listeners: list[FakeListener] = []
        self.planted: set[str] = set()  # entries (values or ``key:error``) without our signature
        self.rejected = 0  # planted entries read (and dropped) as misses
        self.held: list[str] = []  # notices waiting for deliver()
        self.calls: list[tuple[str, str]] = []  # (operation, key), for tests that count
        self._lock = threading.RLock()

    # the BlockCache interface
    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            self.calls.append(("get", key))
            if self._rejects(key):
                return None
            value = self.values.get(key)
            return None if value is None else value.copy()

    def discard(self, key: str) -> None:
        with self._lock:
            self.values.pop(key, None)

    def error(self, key: str) -> str | None:
        with self._lock:
            if self._rejects(key + ":error"):
                return None
            entry = self.errors.get(key)
            if entry is not None and entry[1] <= self.clock():
                del self.errors[key]
                entry = None
            return entry[0] if entry else None

    def claim(self, key: str, token: str) -> bool:
        with self._lock:
            self.calls.append(("claim", key))
            if key in self.values or self.error(key) is not None or self.leased(key) or key in self.planted:
                return False
            self.leases[key] = _Lease(token, self.clock() + self.config.lease_s)
            return True

    def claim_many(self, leases: dict[str, str]) -> list[int]:
        with self._lock:
            outcomes = []
            for key, token in leases.items():
                if key in self.values or key in self.planted:
                    outcomes.append(CACHED)
                elif key + ":error" in self.planted or self.error(key) is not None:
                    outcomes.append(FAILED)
                else:
                    outcomes.append(CLAIMED if self.claim(key, token) else HELD)
            return outcomes

    def get_many(self, keys: list[str]) -> list[np.ndarray | None]:
        with self._lock:
            return [self.get(key) for key in keys]

    def leased_many(self, keys: list[str]) -> list[bool]:
        with self._lock:
            return [self.leased(key) for key in keys]

    def renew_all(self, leases: dict[str, str]) -> list[str]:
        with self._lock:
            lost = []
            for key, token in leases.items():
                self.calls.append(("renew", key))
                lease = self._lease(key)
                if lease is None or lease.token != token:
                    lost.append(key)
                else:
                    lease.expires = self.clock() + self.config.lease_s
            return lost

    def release(self, key: str, token: str, retry: bool = True) -> None:
        with self._lock:
            lease = self._lease(key)
            if lease is not None and lease.token == token:
                del self.leases[key]

    def abandon(self, key: str, token: str) -> None:
        with self._lock:
            self.release(key, token)
        self._publish(key)

    def leased(self, key: str) -> bool:
        with self._lock:
            return self._lease(key) is not None

    def complete(self, key: str, array: np.ndarray) -> None:
        with self._lock:
            self.calls.append(("complete", key))
            self.values[key] = np.array(array, copy=True)
            self.planted.discard(key)
            self.leases.pop(key, None)
        self._publish(key)

    def complete_many(self, blocks: list[tuple[str, np.ndarray]]) -> None:
        for key, array in blocks:
            self.complete(key, array)

    def fail(self, key: str, message: str) -> None:
        with self._lock:
            self.errors[key] = (message, self.clock() + self.config.error_ttl_s)
            self.planted.discard(key + ":error")
            self.leases.pop(key, None)
        self._publish(key)

    def memory_mb(self) -> float:
        with self._lock:
            return round(sum(v.nbytes for v in self.values.values()) / 2**20, 1)

    def stop_retrying(self) -> None:
        pass

    def listen(self, on_notice, on_lost, on_back=None) -> FakeListener:
        listener = FakeListener(self, on_notice, on_lost, on_back)
        with self._lock:
            self.listeners.append(listener)
        return listener

    # what tests drive
    def plant(self, name: str) -> None:
        """Someone without our signing key writes the entry ``name`` (a block's key, or ``key:error``)."""
        with self._lock:
            self.values.pop(name, None)
            self.planted.add(name)

    def _rejects(self, name: str) -> bool:
        if name not in self.planted:
            return False
        self.planted.discard(name)
        self.rejected += 1
        return True

    def _lease(self, key: str) -> _Lease | None:
        lease = self.leases.get(key)
        if lease is not None and lease.expires <= self.clock():
            del self.leases[key]
            return None
        return lease

    def _publish(self, key: str) -> None:
        if self.immediate:
            self._notify(key)
        else:
            with self._lock:
                self.held.append(key)

    def _notify(self, key: str) -> None:
        for listener in list(self.listeners):
            listener.on_notice(key)

    def deliver(self, order: Callable[[list[str]], list[str]] = lambda keys: keys) -> int:
        """Deliver the held notices (in ``order(held)``); returns how many."""
        with self._lock:
            held, self.held = self.held, []
        keys = order(held)
        for key in keys:
            self._notify(key)
        return len(keys)

    def lose_notices(self, error: Exception | None = None) -> None:
        """The notice channel breaks: every listener hears ``on_lost``; held notices are lost with it."""
        with self._lock:
            self.held.clear()
        for listener in list(self.listeners):
            listener.on_lost(error or ConnectionError("notice channel lost"))

    def notices_back(self) -> None:
        """The notice channel is back: every listener hears ``on_back``."""
        for listener in list(self.listeners):
            if listener.on_back is not None:
                listener.on_back()


# -- pipelines and the executor ------------------------------------------------------------------------------
class FakePipeline:
    """Enough of a Pipeline for the gateway: a name, a halo, channels and dtypes per result kind."""

    def __init__(self, name: str, label_count: int = 2, halo: tuple[int, int, int] = (0, 1, 1)):
        self.name, self.label_count, self.halo = name, label_count, halo

    def fingerprint(self) -> str:
        return hashlib.sha1(self.name.encode()).hexdigest()[:20]

    def channels(self, kind: str) -> int:
        return self.label_count if kind == "Probabilities" else 1

    def dtype(self, kind: str) -> np.dtype:
        return np.dtype(np.uint8 if kind == "Simple Segmentation" else np.float32)

    accepts = Pipeline.accepts  # a result of the task's dtype and shape, as a real pipeline checks it

    def value(self) -> float:
        """The value every voxel of this pipeline's results has (so a test can tell who computed a block)."""
        return (int(self.fingerprint(), 16) % 1000) / 1000


@dataclass
class FakeTask:
    """A task the fake executor holds until the test (or its worker thread) finishes it."""

    task: BlockTask
    priority: int
    seq: int
    future: TaskFuture
    pipeline: object = field(repr=False)

    def result(self) -> np.ndarray:
        """What a :class:`FakePipeline` computes for this task: its value over the target, per channel."""
        shape = tuple(b - a for a, b in self.task.target) + (self.pipeline.channels(self.task.kind),)
        return np.full(shape, self.pipeline.value(), self.pipeline.dtype(self.task.kind))


class FakeExecutor(Executor):
    """An Executor whose tasks wait until the test finishes them; with ``auto``, one thread computes them in
    priority order (``compute(task, pipeline)``, default: :meth:`FakeTask.result`), like one worker process.
    The block tasks of an objects labelling are always computed for real (``ObjectsPipeline.run``)."""

    def __init__(self, auto: bool = False, compute: Callable | None = None):
        others = compute or (lambda job: job.result())
        self.compute = lambda job: job.pipeline.run(job.task) if isinstance(job.pipeline, ObjectsPipeline) \
            else others(job)
        self.pipelines: dict[str, object] = {}  # the pipelines tasks may refer to now
        self.refs = PipelineRefs()
        self.tasks: list[FakeTask] = []  # every task ever submitted, in order
        self.closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="fake-executor", daemon=True) if auto else None
        if self._thread is not None:
            self._thread.start()

    def add_pipeline(self, pipeline) -> str:
        fingerprint = pipeline.fingerprint()
        self.collect()
        if self.refs.add(fingerprint):
            self.pipelines[fingerprint] = pipeline
        return fingerprint

    def remove_pipeline(self, fingerprint: str) -> None:
        self.refs.release(fingerprint)

    def collect(self) -> None:
        """Apply the releases noted so far (as a real executor does on its own thread)."""
        for fingerprint in self.refs.collect():
            self.pipelines.pop(fingerprint, None)

    def submit(self, task: BlockTask, priority: int = 0) -> TaskFuture:
        self.collect()
        if task.pipeline not in self.pipelines:
            raise ValueError(f"task refers to pipeline {task.pipeline}, which was never added")
        future = TaskFuture()
        with self._changed:
            if self.closed:
                settle(future, error=TaskError("executor closed"))
                return future
            self.tasks.append(FakeTask(task, priority, len(self.tasks), future, self.pipelines[task.pipeline]))
            self.refs.task_started(task.pipeline)
            self._changed.notify_all()
        future.add_done_callback(lambda _, fingerprint=task.pipeline: self.refs.task_ended(fingerprint))
        return future

    def cancel(self, future: TaskFuture) -> bool:
        return future.cancel()  # fails once started (set_running_or_notify_cancel)

    def status(self) -> ExecutorStatus:
        pending = len(self.pending())
        with self._changed:
            submitted = len(self.tasks)
        return ExecutorStatus("fake", None, (WorkerStatus("fake", "memory", 1, "busy" if pending else "idle"),),
                              queued=pending, submitted=submitted, done=submitted - pending)

    def wait_for_workers(self, processes: int, timeout: float) -> bool:
        return processes <= 1

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for job in self.pending():
            settle(job.future, error=TaskError("executor closed"))

    # what tests drive
    def pending(self) -> list[FakeTask]:
        """Tasks not settled yet, oldest first."""
        with self._changed:
            return [job for job in self.tasks if not job.future.done()]

    def start(self, job: FakeTask) -> bool:
        """The task runs now and can no longer be cancelled; False if it was cancelled."""
        return job.future.running() or job.future.set_running_or_notify_cancel()

    def finish(self, job: FakeTask, values: np.ndarray | None = None, error: Exception | None = None) -> bool:
        """Settle ``job`` with ``values`` (default: what it computes) or ``error``; False if it was settled."""
        if job.future.done() or not self.start(job):
            return False
        if error is not None:
            return settle(job.future, error=error)
        try:
            values = self.compute(job) if values is None else values
        except Exception as exc:  # a failing computation fails its task, as on a worker
            return settle(job.future, error=exc)
        return settle(job.future, result=values)

    def _work(self) -> None:
        while True:
            with self._changed:
                waiting = []
                while not self.closed and not (waiting := [j for j in self.tasks if not j.future.done()
                                                           and not j.future.running()]):
                    self._changed.wait()
                if self.closed:
                    return
                job = min(waiting, key=lambda j: (j.priority, j.seq))
            self.finish(job)


class MemoryPreferences:
    """Preferences (QSettings' methods) kept in memory."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}

    def value(self, key: str, default=None):
        """The value of ``key``, or ``default``."""
        return self.values.get(key, default)

    def setValue(self, key: str, value) -> None:  # noqa: N802 - QSettings' name
        """Keep ``value`` under ``key``."""
        self.values[key] = value

    def remove(self, key: str) -> None:
        """Forget ``key``."""
        self.values.pop(key, None)

    def contains(self, key: str) -> bool:
        """True if ``key`` is kept."""
        return key in self.values


class FakeServices:
    """The application's services in memory: a fake cache and an executor that computes real pipelines in a
    thread (``executor``); enough for documents, training and serving without workers or a cache server."""

    def __init__(self, config=None):
        from backend.config import Config

        self.config = config or Config()
        self.cache = FakeCache()
        self.executor = FakeExecutor(auto=True, compute=lambda job: job.pipeline.run(job.task))
        self.gateways: list = []

    def gateway(self, source, pipeline, block_shape):
        """A gateway for one image on the fakes (closed by :meth:`close`)."""
        from backend.service.gateway import Gateway, GatewayConfig

        gateway = Gateway(source, pipeline, self.executor, self.cache, GatewayConfig(block_shape))
        self.gateways.append(gateway)
        return gateway

    def close(self) -> None:
        """Close every gateway, then the executor."""
        for gateway in self.gateways:
            gateway.close()
        self.executor.close()
