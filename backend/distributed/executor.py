"""The Executor interface (submit a block task, get a future) and the typed statuses executors report."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from backend.compute.pipeline import BlockTask, Pipeline
from backend.distributed.futures import TaskFuture


@dataclass(frozen=True)
class WorkerStatus:
    """One worker as an executor sees it (ZeroMQ workers fill the heartbeat and rate, Dask ones the memory)."""

    host: str
    endpoint: str
    processes: int
    state: str  # idle, busy or slow
    kind: str = "remote"  # local: one of the application's own worker processes; dask: a Dask worker
    version: str = ""
    in_flight: int = 0
    overdue: int = 0
    blocks_done: int = 0
    blocks_per_s: float = 0.0
    heartbeat_age_s: float | None = None  # ZeroMQ workers
    memory_mb: float | None = None  # Dask workers
    memory_limit_mb: float | None = None  # Dask workers


@dataclass(frozen=True)
class LostWorker:
    """A worker that was dropped, with why and how long ago."""

    host: str
    endpoint: str
    kind: str
    reason: str
    ago_s: float


@dataclass(frozen=True)
class ExecutorStatus:
    """Counters for display: workers, queue and finished tasks (every executor fills all of it)."""

    kind: str  # local, zmq or dask
    address: str | None
    workers: tuple[WorkerStatus, ...] = ()
    queued: int = 0
    submitted: int = 0
    done: int = 0
    compute_s: float = 0.0
    no_workers_s: float = 0.0  # how long there has been no worker (0 while there is one)

    @property
    def processes(self) -> int:
        """Compute processes (threads on Dask) of all workers."""
        return sum(w.processes for w in self.workers)


@dataclass(frozen=True)
class ZmqStatus(ExecutorStatus):
    """The ZeroMQ executor's status: also lost and refused workers, retries and rejected messages."""

    lost: tuple[LostWorker, ...] = ()
    refused: tuple[str, ...] = ()
    queued_by_priority: dict[int, int] = field(default_factory=dict)
    failed: int = 0
    redispatched: int = 0
    overdue: int = 0
    rejected: int = 0
    dropped_messages: int = 0
    roundtrip_s: float = 0.0


class Executor(ABC):
    """Something that computes block tasks, locally or remotely. Every future it returns is settled exactly
    once (result, error or cancelled), also when the executor closes."""

    @abstractmethod
    def add_pipeline(self, pipeline: Pipeline) -> str:
        """Make a pipeline available to the workers; returns the fingerprint tasks refer to."""

    @abstractmethod
    def remove_pipeline(self, fingerprint: str) -> None:
        """Give back the reference one :meth:`add_pipeline` took. A pipeline without references is dropped,
        from the workers too, once none of its tasks is pending; then tasks may no longer refer to it. Safe
        from any thread and from a finalizer: it only notes the release."""

    @abstractmethod
    def submit(self, task: BlockTask, priority: int = 0) -> TaskFuture:
        """Start computing ``task`` (lower priority values first); the future resolves to the result."""

    @abstractmethod
    def cancel(self, future: TaskFuture) -> bool:
        """Drop a task that has not started; True if it will not run."""

    @abstractmethod
    def status(self) -> ExecutorStatus:
        """Counters for display: workers, queued and finished tasks."""

    @abstractmethod
    def wait_for_workers(self, processes: int, timeout: float) -> bool:
        """Block until workers with at least ``processes`` processes are there; False after ``timeout`` s."""

    @abstractmethod
    def close(self) -> None:
        """Stop all workers and wait for them; pending futures fail."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def default_workers() -> int:
    """One worker per available core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
