"""Block tasks to a Dask cluster and their results back, in batches.

``client.submit`` per block makes the scheduler take one graph update per block. Here the tasks queued since
the sending thread's last turn go as one ``client.map`` per priority, the most urgent first (Dask runs higher
priorities first, and within one priority older batches first: ``fifo_timeout=0``). Results stay on the
workers until the results thread is ready for them: it takes the tasks finished meanwhile, fetches up to
``dask_gather_batch`` results with one ``client.gather`` and settles their futures as one settling batch (the
gateway then writes them to the cache together). A result that dies with its worker before it was fetched is
computed again by Dask, as the client still holds its future; the gather waits for it. Withdrawn tasks are
cancelled on the cluster together, in the sending thread's next turn.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from functools import partial

from backend.compute.pipeline import BlockTask
from backend.config import ExecutorConfig
from backend.distributed.futures import TaskError, TaskFuture, guarded, settle
from backend.distributed.settling import settle_all
from backend.errors import TransientError

log = logging.getLogger(__name__)


class TaskBatches:
    """The tasks of one Dask client between ``queue`` and their futures' settling; two threads (sending and
    results), both ended by :meth:`close`. ``compute(fingerprint, frames)`` is the task function, ``encode(task)``
    makes its frames, ``lost_message()`` says that the scheduler is gone."""

    def __init__(self, client, compute: Callable, encode: Callable[[BlockTask], list[bytes]], config: ExecutorConfig,
                 lost_message: Callable[[], str]):
        self.client, self.compute, self.encode, self.config = client, compute, encode, config
        self.lost_message = lost_message
        self._lock = threading.Lock()
        self._closed = False
        self._outbox: list[tuple[tuple, int, TaskFuture]] = []  # ((fingerprint, key, frames), priority, future)
        self._withdrawn: list = []  # cluster futures to cancel in the next turn
        self._pending: dict[int, tuple[TaskFuture, object]] = {}  # id(caller's future) -> (it, cluster future)
        self._by_key: dict[str, TaskFuture] = {}  # a sent task's Dask key -> the caller's future
        self._finished: deque = deque()  # cluster futures whose task ended, not yet looked at
        self._counter = itertools.count()
        self.batches_sent = self.done = 0
        self.compute_s = 0.0
        self._send_wake, self._results_wake = threading.Event(), threading.Event()
        self._threads = [threading.Thread(target=self._send_loop, name="dask-submit", daemon=True),
                         threading.Thread(target=self._results_loop, name="dask-results", daemon=True)]
        for thread in self._threads:
            thread.start()

    def queue(self, task: BlockTask, priority: int, outer: TaskFuture) -> bool:
        """Send ``task`` in the next batch (lower ``priority`` values sooner); False once closed."""
        sending = (task.pipeline, f"ilastik-{task.pipeline}-{task.kind}-{task.key}", self.encode(task))
        with self._lock:
            if self._closed:
                return False
            self._outbox.append((sending, priority, outer))
            self._pending[id(outer)] = (outer, None)
        self._send_wake.set()
        return True

    def withdraw(self, outer: TaskFuture) -> None:
        """Forget the (cancelled) ``outer``; its task is cancelled on the cluster in the next turn."""
        with self._lock:
            inner = self._pending.pop(id(outer), (None, None))[1]
            if inner is not None:
                self._withdrawn.append(inner)
        if inner is not None:
            self._send_wake.set()

    def pending(self) -> int:
        """Tasks queued or computing whose future is not settled."""
        with self._lock:
            return len(self._pending)

    # -- the sending thread ----------------------------------------------------------------------------
    def _send_loop(self) -> None:
        while True:
            self._send_wake.wait()
            self._send_wake.clear()
            with self._lock:
                if self._closed:
                    return
                outbox, self._outbox = self._outbox, []
                withdrawn, self._withdrawn = self._withdrawn, []
            if withdrawn:
                self._cancel_on_cluster(withdrawn)
            groups: dict[int, list] = {}
            for sending, priority, outer in outbox:
                if not outer.done():  # withdrawn before it was sent
                    groups.setdefault(priority, []).append((sending, outer))
            for priority in sorted(groups):
                guarded(self._send, groups[priority], priority)

    def _send(self, items: list[tuple[tuple, TaskFuture]], priority: int) -> None:
        """One ``client.map`` of ``items`` at ``priority`` (Dask's sense is the opposite: higher is sooner)."""
        keys = [f"{key}-{next(self._counter)}" for (_, key, _), _ in items]
        try:
            inners = self.client.map(self.compute, [fingerprint for (fingerprint, _, _), _ in items],
                                     [frames for (_, _, frames), _ in items], key=keys, priority=-priority,
                                     pure=False, retries=1, fifo_timeout=0)
        except Exception as exc:  # the client is closed or the scheduler gone
            error = TransientError(f"{self.lost_message()} ({type(exc).__name__}: {exc})")
            for _, outer in items:
                self._forget(outer)
                settle(outer, error=error)
            return
        self.batches_sent += 1
        late = []
        with self._lock:
            for (_, outer), inner in zip(items, inners):
                if outer.done() or id(outer) not in self._pending:  # withdrawn while it was being sent
                    self._pending.pop(id(outer), None)
                    late.append(inner)
                    continue
                self._pending[id(outer)] = (outer, inner)
                self._by_key[inner.key] = outer
        if late:
            self._cancel_on_cluster(late)
        for inner in inners:
            inner.add_done_callback(self._ended)

    def _cancel_on_cluster(self, inners: list) -> None:
        try:
            self.client.cancel(inners)
        except Exception as exc:  # the scheduler is gone: nothing left to cancel
            log.debug("could not cancel %d Dask tasks: %s", len(inners), exc)

    def _ended(self, inner) -> None:
        """Dask's completion callback (its callback thread): note it, the results thread looks at it."""
        self._finished.append(inner)
        self._results_wake.set()

    # -- the results thread ----------------------------------------------------------------------------
    def _results_loop(self) -> None:
        while True:
            self._results_wake.wait()
            self._results_wake.clear()
            while self._finished and not self._closed:
                count = min(len(self._finished), self.config.dask_gather_batch)
                guarded(self._collect, [self._finished.popleft() for _ in range(count)])
            if self._closed:
                return

    def _collect(self, batch: list) -> None:
        """Fetch the results of ``batch`` still wanted in one round trip; settle their futures together."""
        wanted = []
        with self._lock:
            for inner in batch:
                outer = self._by_key.pop(inner.key, None)
                if outer is not None and id(outer) in self._pending:
                    wanted.append((outer, inner))
        finished = {inner.key: inner for _, inner in wanted if inner.status not in ("error", "cancelled")}
        values, lost = {}, None
        if finished:
            try:
                values = self.client.gather(finished, errors="skip")
            except Exception as exc:
                lost = TransientError(f"{self.lost_message()} ({type(exc).__name__}: {str(exc)[:200]})")
        settle_all([partial(self._settle, outer, inner, values.get(inner.key), lost) for outer, inner in wanted])

    def _settle(self, outer: TaskFuture, inner, value, lost: TransientError | None) -> None:
        if self._closed:
            return  # close() settles it
        self._forget(outer)
        with self._lock:
            self.done += 1
        if value is not None:
            values, outer.compute_s = value
            with self._lock:
                self.compute_s += outer.compute_s
            settle(outer, result=values)
        elif lost is not None:
            settle(outer, error=lost)
        elif inner.status == "error":
            settle(outer, error=self._task_error(inner))
        elif inner.status == "cancelled" and self.client.status == "running":
            outer.cancel()
        elif inner.status == "cancelled":  # not by us: the scheduler went away
            settle(outer, error=TransientError(self.lost_message()))
        else:
            settle(outer, error=TransientError(f"the block's result was lost ({inner.status})"))

    def _task_error(self, inner) -> Exception:
        """A failed task's error as a TaskError (its remote traceback stays on the worker)."""
        try:
            error = inner.exception()
        except Exception as exc:
            return TransientError(f"{self.lost_message()} ({type(exc).__name__}: {str(exc)[:200]})")
        return TaskError(f"{type(error).__name__}: {error}"[:1000])

    def _forget(self, outer: TaskFuture) -> None:
        with self._lock:
            self._pending.pop(id(outer), None)

    def close(self, timeout: float = 15) -> None:
        """End both threads; every task still pending is cancelled on the cluster and its future cancelled."""
        with self._lock:
            self._closed = True
        self._send_wake.set()
        self._results_wake.set()
        self._threads[0].join(timeout)
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
            self._by_key.clear()
            self._outbox.clear()
        inners = [inner for _, inner in pending if inner is not None]
        if inners and self.client.status == "running":
            self._cancel_on_cluster(inners)  # also ends a gather that waits for one of them
        self._threads[1].join(timeout)
        for outer, _ in pending:
            if not outer.cancel():
                settle(outer, error=TransientError("the Dask executor was closed"))

