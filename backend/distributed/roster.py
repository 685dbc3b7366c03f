"""The ZeroMQ executor's books: queued jobs, registered workers and what each of them computes.

Pure bookkeeping, no sockets and no threads: the executor calls it under its lock and sends what it
decides. The rules live here: each worker gets at most one task in flight per process plus one
queued; exports (background priority) fill at most one of those slots per process, so a visible
tile never waits behind more than one export block per process; the slower side's heartbeat sets
the silence limit; a lost worker's tasks go back to the queue (not the tasks' fault); a task far
slower than its peers (10 x the recent median plus a floor) is re-dispatched and its worker counts
as slow, and its late answer is still welcome: a result settles the task, an error (its worker killed the stuck
compute process, at twice the deadline) only frees the process, and without an answer within two more
deadlines the task is forgotten there; a result must be exactly what its task asked for; with no worker for
``worker_timeout_s`` (when the executor fails without workers) the queued tasks fail. Futures are never
settled here: the methods return what settles them, for the executor to run outside its lock. Time comes
from ``clock`` (``time.monotonic`` unless a test drives it)."""

from __future__ import annotations

import heapq
import itertools
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from backend.checks import whole_number
from backend.compute.pipeline import BlockTask, Pipeline
from backend.config import ExecutorConfig
from backend.distributed.executor import LostWorker, WorkerStatus
from backend.distributed.futures import TaskError, TaskFuture, settle
from backend.distributed.protocol import Message, peer_interval
from backend.errors import TransientError

log = logging.getLogger(__name__)
Settle = Callable[[], None]
LOST_SHOWN = 20  # lost workers kept for display
HEARD_KEPT = 64  # local worker processes whose last message time is kept (for the app's supervisor)
BACKGROUND_PRIORITY = 3  # tasks this urgent or less (exports) fill at most one slot per process


class NoWorkers(TransientError):
    """No worker was registered for longer than the executor's ``worker_timeout_s``."""


@dataclass(order=True)
class Job:
    """A task on its way: queued, or in flight on one worker."""

    priority: int
    seq: int
    task: BlockTask = field(compare=False)
    future: TaskFuture = field(compare=False)
    attempts: int = field(default=0, compare=False)
    sent: float = field(default=0.0, compare=False)


@dataclass
class Remote:
    """A registered worker and the tasks it holds."""

    route: tuple[int, bytes]  # (socket number, routing id)
    host: str
    processes: int
    version: str
    last_heard: float
    started: float
    endpoint: str = ""
    heartbeat_s: float = 0.0
    in_flight: dict[str, Job] = field(default_factory=dict)
    overdue: dict[str, tuple[Job, float]] = field(default_factory=dict)  # re-dispatched elsewhere (and when);
    # they still occupy a process until their worker answers or they are forgotten
    pid: int = 0
    pipelines: set[str] = field(default_factory=set)
    done: int = 0
    kind: str = "remote"  # "local": one of the application's own worker processes
    finished: deque = field(default_factory=lambda: deque(maxlen=256))  # when its recent blocks came back

    def recent_rate(self, now: float, window_s: float) -> float:
        """Blocks per second over the last ``window_s`` seconds (or since it registered, if later)."""
        recent = sum(1 for at in self.finished if at > now - window_s)
        return recent / max(min(window_s, now - self.started), 1e-6)


@dataclass(frozen=True)
class Lost:
    """A dropped worker, kept for display."""

    host: str
    endpoint: str
    kind: str
    reason: str
    at: float


class Roster:
    """Queue, workers and counters of one executor (see the module docstring)."""

    def __init__(self, config: ExecutorConfig = ExecutorConfig(), fail_without_workers: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.config, self.fail_without_workers, self.clock = config, fail_without_workers, clock
        self.queue: list[Job] = []
        self.workers: dict[tuple[int, bytes], Remote] = {}
        self.pipelines: dict[str, Pipeline] = {}
        self.counters = {"submitted": 0, "done": 0, "failed": 0, "redispatched": 0, "overdue": 0, "rejected": 0,
                         "dropped_messages": 0, "compute_s": 0.0, "roundtrip_s": 0.0}
        self._seq = itertools.count()
        # task keys are unique across executors: a worker that served an earlier gateway may still send
        # that gateway's late results, which must never complete our tasks
        self._run_id = uuid.uuid4().hex[:12]
        self._roundtrips: deque[float] = deque(maxlen=64)  # seconds from dispatch to result, recent tasks
        self._no_workers_since: float | None = clock()
        self.lost: deque[Lost] = deque(maxlen=LOST_SHOWN)  # workers dropped, with why and when
        self.heard: OrderedDict[int, float] = OrderedDict()  # local worker pid -> when it last spoke
        self._dispatches = itertools.count()  # each dispatch gets its own task key

    def push(self, task: BlockTask, priority: int) -> TaskFuture:
        """Queue a task; returns its future."""
        future = TaskFuture()
        heapq.heappush(self.queue, Job(priority, next(self._seq), task, future))
        self.counters["submitted"] += 1
        return future

    def register(self, route: tuple[int, bytes], fields: dict, endpoint: str, kind: str = "remote") -> Remote | None:
        """Book a worker that said READY; None (counted as dropped) if its announcement is malformed."""
        try:
            processes = whole_number(fields.get("processes", 1), 1, 4096)
            pid = whole_number(fields.get("pid", 0), 0, 2**31)
        except ValueError as exc:
            self.counters["dropped_messages"] += 1
            log.warning("dropped a READY with a bad process count: %s", exc)
            return None
        if route in self.workers:
            self.drop(route, "re-registered")
        self._no_workers_since = None
        now = self.clock()
        worker = self.workers[route] = Remote(route, str(fields.get("host", "?"))[:200], processes,
                                              str(fields.get("version", "?"))[:100], now, now,
                                              endpoint=endpoint, heartbeat_s=peer_interval(fields), kind=kind,
                                              pid=pid)
        self.heard_from(worker)
        back = [w for w in self.lost if (w.host, w.endpoint) == (worker.host, endpoint)]
        for entry in back:  # it came back: no longer shown as lost
            self.lost.remove(entry)
        log.info("worker %s registered with %d processes", worker.host, processes)
        return worker

    def drop(self, route: tuple[int, bytes], why: str) -> None:
        """Forget a worker; its tasks go back to the queue (a lost worker is not the tasks' fault)."""
        worker = self.workers.pop(route)
        if why != "re-registered":
            self.lost.append(Lost(worker.host, worker.endpoint, worker.kind, why, self.clock()))
        level = logging.WARNING if worker.in_flight or why != "said goodbye" else logging.INFO
        log.log(level, "worker %s dropped (%s); re-dispatching %d tasks", worker.host, why, len(worker.in_flight))
        for job in worker.in_flight.values():
            job.attempts -= 1
            self._requeue(job)

    def heard_from(self, worker: Remote) -> None:
        """Note that ``worker`` spoke just now (any message counts as a heartbeat)."""
        worker.last_heard = self.clock()
        if worker.kind == "local" and worker.pid:
            self.heard[worker.pid] = worker.last_heard
            self.heard.move_to_end(worker.pid)
            while len(self.heard) > HEARD_KEPT:
                self.heard.popitem(last=False)

    def complete(self, worker: Remote, message: Message) -> Settle | None:
        """Book a RESULT or ERROR; returns what settles the task's future (None: nothing to settle)."""
        key = str(message.fields.get("key"))
        job = worker.in_flight.pop(key, None)
        overdue = job is None and key in worker.overdue
        if overdue:
            job = worker.overdue.pop(key)[0]
        if job is None or job.future.done():
            return None
        fields = message.fields
        if overdue and message.type == "ERROR" and fields.get("deterministic") is not True:
            return None  # its worker gave up on it (killed the stuck process); it was re-dispatched already
        if message.type == "RESULT" and not self._acceptable(job, message.arrays):
            self.counters["rejected"] += 1
            log.warning("worker %s answered a %s task with %s; rejected", worker.host, job.task.kind,
                        [(a.dtype.str, a.shape) for a in message.arrays][:2])
            fields = {"message": "the worker sent a malformed result"}
        elif message.type == "RESULT":
            return self._book_result(worker, job, message)
        if fields.get("missing_pipeline") == job.task.pipeline:
            worker.pipelines.discard(job.task.pipeline)  # sent again before the task's next dispatch
            job.attempts -= 1  # the worker dropped it (it keeps a few): not the task's fault
            self._requeue(job)
            return None
        if fields.get("deterministic") or job.attempts + 1 >= self.config.max_attempts:
            self.counters["failed"] += 1
            error = TaskError(str(fields.get("message", "task failed"))[:1000],
                              deterministic=fields.get("deterministic") is True)
            return lambda: settle(job.future, error=error)
        self._requeue(job)
        return None

    def forget(self, fingerprint: str) -> None:
        """Drop a pipeline no task needs any more (workers asked for it again get it again)."""
        self.pipelines.pop(fingerprint, None)
        for worker in self.workers.values():
            worker.pipelines.discard(fingerprint)

    def _book_result(self, worker: Remote, job: Job, message: Message) -> Settle:
        now = self.clock()
        roundtrip = now - job.sent
        self._roundtrips.append(roundtrip)
        worker.done += 1
        worker.finished.append(now)
        compute_s = _seconds(message.fields.get("compute_s"))
        self.counters["done"] += 1
        self.counters["compute_s"] += compute_s
        self.counters["roundtrip_s"] += roundtrip
        job.future.compute_s = compute_s
        return lambda: settle(job.future, result=message.arrays[0])

    def _acceptable(self, job: Job, arrays: list) -> bool:
        """A result must be exactly what its task asked for: one array its pipeline accepts for the task."""
        return len(arrays) == 1 and self.pipelines[job.task.pipeline].accepts(job.task, arrays[0])

    def _requeue(self, job: Job) -> None:
        job.attempts += 1
        self.counters["redispatched"] += 1
        heapq.heappush(self.queue, job)

    def expire(self, now: float) -> list[Settle]:
        """Drop silent workers, re-dispatch overdue tasks, fail tasks that waited too long for any worker."""
        settles: list[Settle] = []
        deadline = self.deadline()
        for route, worker in list(self.workers.items()):
            limit = max(self.config.heartbeat_s, worker.heartbeat_s) * self.config.liveness  # the slower side
            if now - worker.last_heard > limit:
                self.drop(route, f"silent for {limit:.1f} s")
                continue
            for key, job in [(k, j) for k, j in worker.in_flight.items() if now - j.sent > deadline]:
                settles += self._overdue(worker, key, job, deadline)
            for key in [k for k, (_, since) in worker.overdue.items() if now - since > 2 * deadline]:
                del worker.overdue[key]  # no answer at all: count its process free again
                log.warning("worker %s never answered a task overdue for %.0f s; forgetting it", worker.host,
                            2 * deadline)
        return settles + self._fail_without_workers(now)

    def _overdue(self, worker: Remote, key: str, job: Job, deadline: float) -> list[Settle]:
        del worker.in_flight[key]
        worker.overdue[key] = (job, self.clock())  # its late result is still welcome; its process stays busy
        self.counters["overdue"] += 1
        log.warning("worker %s is slow: a task took more than %.0f s; re-dispatching it", worker.host, deadline)
        if job.attempts + 1 < self.config.max_attempts:
            self._requeue(job)
            return []
        error = TaskError(f"a task took more than {deadline:.0f} s on {self.config.max_attempts} workers")
        return [lambda: settle(job.future, error=error)]

    def deadline(self) -> float:
        """How long a task may take before it is re-dispatched: ten times the recent median plus a floor."""
        if not self._roundtrips:
            return 4 * self.config.deadline_floor_s
        return self.config.deadline_floor_s + 10 * sorted(self._roundtrips)[len(self._roundtrips) // 2]

    def _fail_without_workers(self, now: float) -> list[Settle]:
        if self.workers:
            self._no_workers_since = None
            return []
        if self._no_workers_since is None:
            self._no_workers_since = now
        timeout = self.config.worker_timeout_s
        if not self.fail_without_workers or now - self._no_workers_since < timeout:
            return []
        failed = [job for job in self.queue if not job.future.done()]
        self.queue.clear()
        if failed:
            log.error("no worker for %.0f s: failing %d queued tasks", now - self._no_workers_since, len(failed))
        error = NoWorkers(f"no worker was available for {timeout:.0f} s")
        return [lambda job=job: settle(job.future, error=error) for job in failed]

    def dispatch(self) -> list[tuple[Remote, str, Job, bool]]:
        """Hand queued jobs to workers with room: (worker, task key, job, whether it needs the pipeline first)."""
        sent = []
        # the least loaded first; a worker holding an overdue task (a stuck process) last
        for worker in sorted(self.workers.values(), key=lambda w: (bool(w.overdue), len(w.in_flight) / w.processes)):
            while len(worker.in_flight) + len(worker.overdue) < 2 * worker.processes and self.queue:
                if self.queue[0].priority >= BACKGROUND_PRIORITY and self._background(worker) >= \
                        worker.processes:
                    break  # keep a slot per process for what a viewer needs next
                job = heapq.heappop(self.queue)
                if job.future.done():
                    continue
                if not job.future.running() and not job.future.set_running_or_notify_cancel():
                    continue  # cancelled while queued
                needs_pipeline = job.task.pipeline not in worker.pipelines
                worker.pipelines.add(job.task.pipeline)
                key = f"{self._run_id}-{next(self._dispatches)}"
                worker.in_flight[key] = job
                job.sent = self.clock()
                sent.append((worker, key, job, needs_pipeline))
        return sent

    def _background(self, worker: Remote) -> int:
        return sum(job.priority >= BACKGROUND_PRIORITY for job in worker.in_flight.values())

    def close(self) -> list[Settle]:
        """Empty the books; returns what fails every pending task."""
        pending = self.queue + [job for w in self.workers.values() for job in w.in_flight.values()]
        self.queue = []
        error = TaskError("executor closed")
        return [lambda job=job: settle(job.future, error=error) for job in pending]

    def workers_status(self, now: float) -> tuple[WorkerStatus, ...]:
        """Workers (host, processes, state, heartbeat age, blocks done, blocks/s)."""
        return tuple(WorkerStatus(w.host, w.endpoint, w.processes, "slow" if w.overdue else "busy" if w.in_flight
                                  else "idle", kind=w.kind, version=w.version, in_flight=len(w.in_flight),
                                  overdue=len(w.overdue), blocks_done=w.done,
                                  blocks_per_s=round(w.recent_rate(now, self.config.rate_window_s), 2),
                                  heartbeat_age_s=round(now - w.last_heard, 2))
                     for w in self.workers.values())

    def lost_status(self, now: float) -> tuple[LostWorker, ...]:
        """The workers dropped lately, with why and how long ago."""
        return tuple(LostWorker(w.host, w.endpoint, w.kind, w.reason, round(now - w.at, 1)) for w in self.lost)

    def waiting(self) -> list[int]:
        """The priorities of the queued tasks (cancelled ones leave the queue only when popped)."""
        return [job.priority for job in self.queue if not job.future.done()]

    def no_workers_s(self, now: float) -> float:
        """How long there has been no worker (0 while there is one)."""
        return round(now - self._no_workers_since, 1) if self._no_workers_since is not None else 0.0


def _seconds(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value == value:
        return 0.0
    return min(max(0.0, float(value)), 1e6)
