"""The Executor interface (submit a block task, get a future) and its local process-pool implementation."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Protocol

import numpy as np

from backend.pipeline import BlockTask, Pipeline


class Executor(Protocol):
    """Something that computes block tasks, locally or remotely."""

    def submit(self, task: BlockTask) -> Future:
        """Start computing ``task``; the future resolves to the result array."""

    def cancel(self, future: Future) -> bool:
        """Drop a task that has not started; True if it will not run."""

    def status(self) -> dict:
        """Counters for display: workers, queued and finished tasks."""

    def close(self) -> None:
        """Stop all workers and wait for them."""


_worker_pipelines: dict[str, Pipeline] = {}


def _init_worker(header: dict, arrays: list[np.ndarray], fingerprint: str) -> None:
    _worker_pipelines[fingerprint] = Pipeline.from_message(header, arrays)


def _run_task(task: BlockTask) -> np.ndarray:
    try:
        pipeline = _worker_pipelines[task.pipeline]
    except KeyError:
        raise RuntimeError(f"worker has no pipeline {task.pipeline}") from None
    return pipeline.run(task)


def default_workers() -> int:
    """One worker per available core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class LocalExecutor:
    """Runs block tasks for one pipeline in ``workers`` local processes."""

    def __init__(self, pipeline: Pipeline, workers: int | None = None):
        self.workers = workers or default_workers()
        self.fingerprint = pipeline.fingerprint()
        header, arrays = pipeline.to_message()
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(header, arrays, self.fingerprint),
        )
        self._submitted = 0
        self._done = 0

    def submit(self, task: BlockTask) -> Future:
        """Queue a task for the pool."""
        if task.pipeline != self.fingerprint:
            raise ValueError("task was planned for another pipeline")
        self._submitted += 1
        future = self._pool.submit(_run_task, task)
        future.add_done_callback(self._count)
        return future

    def _count(self, _future: Future) -> None:
        self._done += 1

    def cancel(self, future: Future) -> bool:
        """Cancel a task that has not started."""
        return future.cancel()

    def status(self) -> dict:
        """Workers, submitted and finished task counts."""
        return {"kind": "local", "workers": self.workers, "submitted": self._submitted, "done": self._done}

    def close(self) -> None:
        """Cancel what is queued and join the worker processes."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
