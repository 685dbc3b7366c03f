"""The ZeroMQ executor: the gateway's side of the worker protocol, behind the Executor interface.

One I/O thread owns every socket. Local workers connect to a plain loopback/ipc ROUTER (``bind``);
remote workers connect to a CurveZMQ ROUTER (:meth:`ZmqExecutor.listen`) or are reached by
connecting out to a worker that listens (:meth:`ZmqExecutor.connect`, CurveZMQ when given the
worker's key). Tasks wait in a priority queue; each worker gets at most one task in flight per
process plus one queued. A worker that stops heartbeating is dropped and its tasks re-dispatched;
a task that fails deterministically is reported once, other failures are retried. A task that takes
far longer than its peers (a hung compute process) is re-dispatched and its worker reported as slow;
with no worker at all for ``no_worker_timeout_s``, queued tasks fail with :class:`NoWorkers`.
Results are checked against their task (shape, dtype) and settled on a completion thread, so a slow
consumer (a cache write) never delays heartbeats.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import zmq

from backend.checks import whole_number
from backend.errors import TransientError
from backend.pipeline import BlockTask, Pipeline
from backend.protocol import (
    MAX_MESSAGE_BYTES,
    ProtocolError,
    VersionMismatch,
    decode,
    encode,
    peer_interval,
    task_message,
)
from backend.security import Authenticator, CurveIdentity, is_local
from backend.wakeup import Wakeup

log = logging.getLogger(__name__)


class TaskError(RuntimeError):
    """A task that failed on a worker (the message says why); ``deterministic`` if it would fail again."""

    def __init__(self, message: str, deterministic: bool = False):
        super().__init__(message)
        self.deterministic = deterministic


class NoWorkers(TransientError):
    """No worker was registered for longer than the executor's ``no_worker_timeout_s``."""


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    task: BlockTask = field(compare=False)
    future: Future = field(compare=False)
    attempts: int = field(default=0, compare=False)
    sent: float = field(default=0.0, compare=False)


@dataclass
class _Remote:
    route: tuple[int, bytes]  # (socket number, routing id)
    host: str
    processes: int
    version: str
    last_heard: float
    endpoint: str = ""
    heartbeat_s: float = 0.0
    in_flight: dict[str, _Job] = field(default_factory=dict)
    overdue: dict[str, _Job] = field(default_factory=dict)  # re-dispatched elsewhere; still occupy a process
    pipelines: set[str] = field(default_factory=set)
    done: int = 0
    started: float = field(default_factory=time.monotonic)


class ZmqExecutor:
    """Dispatch block tasks to ZeroMQ workers; see the module docstring."""

    def __init__(self, bind: str | None = "tcp://127.0.0.1:0", connect_to: tuple[str, ...] = (),
                 identity: CurveIdentity | None = None, heartbeat_s: float = 1.0, liveness: int = 3,
                 max_attempts: int = 3, no_worker_timeout_s: float | None = None, deadline_floor_s: float = 30.0):
        self.context = zmq.Context()
        self.identity = identity
        self.heartbeat_s, self.liveness, self.max_attempts = heartbeat_s, liveness, max_attempts
        self.no_worker_timeout_s, self.deadline_floor_s = no_worker_timeout_s, deadline_floor_s
        self._no_workers_since: float | None = time.monotonic()
        self._roundtrips: deque[float] = deque(maxlen=64)  # seconds from dispatch to result, recent tasks
        self._completions = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zmq-completions")
        self._pipeline_objects: dict[str, Pipeline] = {}
        self.authenticator = Authenticator(self.context, identity) if identity else None
        self._sockets: dict[int, zmq.Socket] = {}
        self._socket_numbers = itertools.count()
        self._outbound: dict[int, tuple[str, bytes]] = {}  # socket number -> (worker endpoint, routing id)
        self._commands: queue.Queue = queue.Queue()
        self._pipelines: dict[str, tuple[dict, list]] = {}
        self._queue: list[_Job] = []
        self._workers: dict[tuple[int, bytes], _Remote] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when a worker registers or is refused
        self._seq = itertools.count()
        # task keys are unique across executors: a worker that served an earlier gateway may still send
        # that gateway's late results, which must never complete our tasks
        self._run_id = uuid.uuid4().hex[:12]
        self._stop = threading.Event()
        self._wakeup = Wakeup()
        self._counters = {"submitted": 0, "done": 0, "failed": 0, "redispatched": 0, "overdue": 0, "rejected": 0,
                          "dropped_messages": 0, "compute_s": 0.0, "roundtrip_s": 0.0}
        self._refused: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="zmq-executor", daemon=True)
        self._thread.start()
        self.address = self._call(lambda: self._bind(bind, secure=False)).result(10) if bind else None
        for endpoint in connect_to:
            self.connect(endpoint)

    # -- endpoints (any thread) ------------------------------------------------------------------------
    def listen(self, endpoint: str) -> str:
        """Accept remote workers on ``endpoint`` (CurveZMQ, allowed keys only); returns the bound address."""
        if self.identity is None:
            raise ValueError("listening for remote workers needs a key pair (identity)")
        return self._call(lambda: self._bind(endpoint, secure=True)).result(10)

    def connect(self, endpoint: str, server_key: bytes | None = None) -> None:
        """Connect out to a worker started with ``--listen`` (CurveZMQ when its key is given)."""
        if server_key is None and not is_local(endpoint):
            raise ValueError(f"{endpoint} is not on this machine: give the worker's public key")
        if server_key is not None and self.identity is None:
            raise ValueError("an encrypted connection needs a key pair (identity)")
        self._call(lambda: self._connect(endpoint, server_key)).result(10)

    def disconnect(self, endpoint: str) -> None:
        """Stop using a worker we connected to (its unfinished tasks go to the others)."""
        self._call(lambda: self._disconnect(endpoint)).result(10)

    def _disconnect(self, endpoint: str) -> None:
        for number in [n for n, (e, _) in self._outbound.items() if e == endpoint]:
            with self._lock:
                for route in [r for r in self._workers if r[0] == number]:
                    self._send(route, encode("DISCONNECT"))
                    self._drop(route, "disconnected by the user")
            del self._outbound[number]
            self._sockets.pop(number).close(linger=0)

    def _call(self, function: Callable) -> Future:
        future: Future = Future()
        self._commands.put((function, future))
        self._wakeup.wake()
        return future

    def _bind(self, endpoint: str, secure: bool) -> str:
        if not secure and not is_local(endpoint):
            raise ValueError(f"{endpoint} is not on this machine: remote workers need listen() with CurveZMQ")
        sock = self._new_socket()
        if secure:
            self.identity.make_server(sock)
        sock.bind(endpoint)
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def _connect(self, endpoint: str, server_key: bytes | None) -> None:
        sock = self._new_socket()
        if server_key is not None:
            self.identity.make_client(sock, server_key)
        routing_id = uuid.uuid4().hex.encode()
        sock.setsockopt(zmq.CONNECT_ROUTING_ID, routing_id)
        sock.connect(endpoint)
        self._outbound[self._number(sock)] = (endpoint, routing_id)

    def _new_socket(self) -> zmq.Socket:
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self._sockets[next(self._socket_numbers)] = sock
        return sock

    def _number(self, sock: zmq.Socket) -> int:
        return next(n for n, s in self._sockets.items() if s is sock)

    # -- the Executor interface (any thread) -----------------------------------------------------------
    def add_pipeline(self, pipeline: Pipeline) -> str:
        """Register a pipeline; it is sent to each worker before its first task."""
        fingerprint = pipeline.fingerprint()
        with self._lock:
            if fingerprint not in self._pipelines:
                self._pipelines[fingerprint] = pipeline.to_message()
                self._pipeline_objects[fingerprint] = pipeline
        return fingerprint

    def submit(self, task: BlockTask, priority: int = 0) -> Future:
        """Queue a task; lower ``priority`` values are dispatched first."""
        if task.pipeline not in self._pipelines:
            raise ValueError(f"task refers to pipeline {task.pipeline}, which was never added")
        future: Future = Future()
        with self._lock:
            heapq.heappush(self._queue, _Job(priority, next(self._seq), task, future))
            self._counters["submitted"] += 1
        self._wakeup.wake()
        return future

    def cancel(self, future: Future) -> bool:
        """Cancel a queued task; tasks already on a worker finish and are discarded."""
        return future.cancel()  # fails once dispatched: _dispatch marks the future running first

    def status(self) -> dict:
        """Workers (host, processes, state, heartbeat age, blocks done, blocks/s), queue depth, counters."""
        now = time.monotonic()
        with self._lock:
            workers = [{"host": w.host, "processes": w.processes, "version": w.version, "endpoint": w.endpoint,
                        "state": "slow" if w.overdue else "busy" if w.in_flight else "idle",
                        "heartbeat_age_s": round(now - w.last_heard, 2), "overdue": len(w.overdue),
                        "in_flight": len(w.in_flight), "blocks_done": w.done,
                        "blocks_per_s": round(w.done / max(now - w.started, 1e-6), 2)}
                       for w in self._workers.values()]
            refused = self._refused + (self.authenticator.refused if self.authenticator else [])
            queued = sum(not job.future.done() for job in self._queue)  # cancelled jobs leave when popped
            return {"kind": "zmq", "address": self.address, "workers": workers, "queued": queued,
                    "no_workers_s": round(now - self._no_workers_since, 1) if self._no_workers_since else 0.0,
                    "processes": sum(w["processes"] for w in workers), "refused": refused[-20:],
                    **{k: round(v, 3) if isinstance(v, float) else v for k, v in self._counters.items()}}

    def wait_for_workers(self, processes: int, timeout: float) -> bool:
        """Block until workers with at least ``processes`` processes are registered."""
        with self._changed:
            return self._changed.wait_for(
                lambda: sum(w.processes for w in self._workers.values()) >= processes, timeout)

    def wait_for_change(self, timeout: float) -> None:
        """Block until a worker registers or a peer is refused, or ``timeout`` seconds pass."""
        with self._changed:
            self._changed.wait(timeout)

    def close(self) -> None:
        """Say goodbye to the workers, fail what is pending, stop the I/O thread and free the sockets."""
        self._stop.set()
        self._wakeup.wake()
        self._thread.join(timeout=10)
        self._completions.shutdown(wait=True)
        for sock in self._sockets.values():
            sock.close(linger=0)
        if self.authenticator:
            self.authenticator.stop()
        self.context.term()
        self._wakeup.close()

    def __enter__(self) -> ZmqExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the I/O thread --------------------------------------------------------------------------------

    def _run_commands(self) -> None:
        while True:
            try:
                function, future = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(function())
            except Exception as exc:  # reported to the caller, who raised the command
                future.set_exception(exc)

    def _loop(self) -> None:
        last_beat = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_beat >= self.heartbeat_s:
                    last_beat = time.monotonic()
                    self._beat()
                self._turn()
            except Exception:  # one bad message or bug must not leave every future pending forever
                log.exception("zmq executor: unexpected error (going on)")
        self._shutdown()

    def _turn(self) -> None:
        """One turn of the I/O loop: commands, incoming messages, expiry and dispatch."""
        self._run_commands()
        poller = zmq.Poller()
        for sock in self._sockets.values():
            poller.register(sock, zmq.POLLIN)
        poller.register(self._wakeup, zmq.POLLIN)
        events = dict(poller.poll(self.heartbeat_s * 1000 / 4))
        if self._wakeup.fileno() in events:
            self._wakeup.drain()
        for number, sock in list(self._sockets.items()):
            while sock in events and sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                frames = sock.recv_multipart(zmq.NOBLOCK)
                self._receive((number, frames[0]), frames[1:])
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            failed = self._fail_without_workers(now)
            self._dispatch()
        for job in failed:
            _settle(job.future, error=NoWorkers(f"no worker was available for {self.no_worker_timeout_s:.0f} s"))

    def _send(self, route: tuple[int, bytes], frames: list) -> None:
        sock = self._sockets.get(route[0])
        if sock is None:
            return
        try:
            sock.send_multipart([route[1], *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("could not send to a worker: %s", exc)

    def _beat(self) -> None:
        with self._lock:
            routes = set(self._workers)
        # workers we connect to wait for us to speak first; keep knocking until they answer READY
        routes.update((number, routing_id) for number, (_, routing_id) in self._outbound.items())
        for route in routes:
            self._send(route, encode("HEARTBEAT", {"heartbeat_s": self.heartbeat_s}))

    def _receive(self, route: tuple[int, bytes], frames: list[bytes]) -> None:
        try:
            message = decode(frames)
        except VersionMismatch as exc:
            self._refuse(f"a worker speaking {exc}")
            return
        except ProtocolError as exc:
            self._counters["dropped_messages"] += 1
            log.warning("dropped a malformed message: %s", exc)
            return
        reason = message.fields.get("reason") if message.type == "DISCONNECT" else None
        if isinstance(reason, str) and route[0] in self._outbound and route not in self._workers:
            self._refuse(f"{self._outbound[route[0]][0]}: {reason[:200]}")  # e.g. busy with another gateway
        settle = None
        with self._lock:
            worker = self._workers.get(route)
            if message.type == "READY":
                self._register(route, message.fields)
            elif worker is None:
                if message.type != "DISCONNECT":
                    self._send(route, encode("DISCONNECT"))  # unknown peer: ask it to re-register
            elif message.type == "DISCONNECT":
                self._drop(route, "said goodbye")
            else:
                worker.last_heard = time.monotonic()
                if message.type in ("RESULT", "ERROR"):
                    settle = self._complete(worker, message)
        if settle is not None:  # on the completion thread: callbacks may write to a slow cache and call us
            self._completions.submit(settle)

    def _refuse(self, why: str) -> None:
        log.warning("refused %s", why)
        with self._lock:
            self._refused = (self._refused + [why])[-20:]
            self._changed.notify_all()

    def _register(self, route, fields: dict) -> None:
        try:
            processes = whole_number(fields.get("processes", 1), 1, 4096)
        except ValueError as exc:
            self._counters["dropped_messages"] += 1
            log.warning("dropped a READY with a bad process count: %s", exc)
            return
        if route in self._workers:
            self._drop(route, "re-registered")
        self._no_workers_since = None
        self._workers[route] = _Remote(route, str(fields.get("host", "?")), processes,
                                       str(fields.get("version", "?")), time.monotonic(),
                                       endpoint=self._outbound.get(route[0], ("", b""))[0],
                                       heartbeat_s=peer_interval(fields))
        self._changed.notify_all()
        log.info("worker %s registered with %d processes", fields.get("host"), processes)

    def _complete(self, worker: _Remote, message) -> Callable[[], None] | None:
        """Book a RESULT or ERROR (under the lock); returns what settles the task's future."""
        key = str(message.fields.get("key"))
        job = worker.in_flight.pop(key, None) or worker.overdue.pop(key, None)
        if job is None or job.future.done():
            return None
        if message.type == "RESULT" and not self._acceptable(job, message.arrays):
            self._counters["rejected"] += 1
            log.warning("worker %s answered a task with %s instead of %s; rejected", worker.host,
                        [(a.dtype.str, a.shape) for a in message.arrays][:2], self._expected(job))
            message = replace(message, type="ERROR", fields={"message": "the worker sent a malformed result"})
        if message.type == "RESULT":
            self._roundtrips.append(time.monotonic() - job.sent)
            worker.done += 1
            compute_s = _seconds(message.fields.get("compute_s"))
            self._counters["done"] += 1
            self._counters["compute_s"] += compute_s
            self._counters["roundtrip_s"] += time.monotonic() - job.sent
            job.future.compute_s = compute_s
            return lambda: _settle(job.future, result=message.arrays[0])
        if message.fields.get("missing_pipeline") == job.task.pipeline:
            worker.pipelines.discard(job.task.pipeline)  # sent again before the task's next dispatch
        if message.fields.get("deterministic") or job.attempts + 1 >= self.max_attempts:
            self._counters["failed"] += 1
            error = TaskError(str(message.fields.get("message", "task failed")),
                              deterministic=message.fields.get("deterministic") is True)
            return lambda: _settle(job.future, error=error)
        self._requeue(job)
        return None

    def _expected(self, job: _Job) -> tuple[str, tuple[int, ...]]:
        pipeline = self._pipeline_objects[job.task.pipeline]
        shape = tuple(b - a for a, b in job.task.target) + (pipeline.channels(job.task.kind),)
        return pipeline.dtype(job.task.kind).str, shape

    def _acceptable(self, job: _Job, arrays: list) -> bool:
        """A result must be exactly what its task asked for: one array of the expected dtype and shape."""
        return len(arrays) == 1 and (arrays[0].dtype.str, arrays[0].shape) == self._expected(job)

    def _requeue(self, job: _Job) -> None:
        job.attempts += 1
        self._counters["redispatched"] += 1
        heapq.heappush(self._queue, job)

    def _drop(self, route, why: str) -> None:
        worker = self._workers.pop(route)
        level = logging.WARNING if worker.in_flight or why != "said goodbye" else logging.INFO
        log.log(level, "worker %s dropped (%s); re-dispatching %d tasks", worker.host, why, len(worker.in_flight))
        for job in worker.in_flight.values():
            job.attempts -= 1  # a lost worker is not the task's fault
            self._requeue(job)

    def _expire(self, now: float) -> None:
        deadline = self._deadline()
        for route, worker in list(self._workers.items()):
            limit = max(self.heartbeat_s, worker.heartbeat_s) * self.liveness  # the slower side sets the pace
            if now - worker.last_heard > limit:
                self._drop(route, f"silent for {limit:.1f} s")
                continue
            for key, job in [(k, j) for k, j in worker.in_flight.items() if now - j.sent > deadline]:
                del worker.in_flight[key]
                worker.overdue[key] = job  # its late result is still welcome; its process stays counted busy
                self._counters["overdue"] += 1
                log.warning("worker %s is slow: a task took more than %.0f s; re-dispatching it", worker.host,
                            deadline)
                if job.attempts + 1 >= self.max_attempts:
                    _settle(job.future, error=TaskError(f"a task took more than {deadline:.0f} s on "
                                                        f"{self.max_attempts} workers"))
                else:
                    self._requeue(job)

    def _deadline(self) -> float:
        """How long a task may take before it is re-dispatched: ten times the recent median plus a floor."""
        if not self._roundtrips:
            return 4 * self.deadline_floor_s
        return self.deadline_floor_s + 10 * sorted(self._roundtrips)[len(self._roundtrips) // 2]

    def _fail_without_workers(self, now: float) -> list[_Job]:
        """The queued jobs to fail because no worker has been registered for ``no_worker_timeout_s``."""
        if self._workers:
            self._no_workers_since = None
            return []
        if self._no_workers_since is None:
            self._no_workers_since = now
        if self.no_worker_timeout_s is None or now - self._no_workers_since < self.no_worker_timeout_s:
            return []
        failed = [job for job in self._queue if not job.future.done()]
        self._queue.clear()
        if failed:
            log.error("no worker for %.0f s: failing %d queued tasks", now - self._no_workers_since, len(failed))
        return failed

    def _dispatch(self) -> None:
        for worker in sorted(self._workers.values(), key=lambda w: len(w.in_flight) / w.processes):
            while len(worker.in_flight) + len(worker.overdue) < 2 * worker.processes and self._queue:
                job = heapq.heappop(self._queue)
                if job.future.done():
                    continue
                if not job.future.running() and not job.future.set_running_or_notify_cancel():
                    continue  # cancelled while queued
                fingerprint = job.task.pipeline
                if fingerprint not in worker.pipelines:
                    header, arrays = self._pipelines[fingerprint]
                    self._send(worker.route, encode("PIPELINE", {"pipeline": header}, arrays))
                    worker.pipelines.add(fingerprint)
                key = f"{self._run_id}-{job.seq}"
                worker.in_flight[key] = job
                job.sent = time.monotonic()
                self._send(worker.route, task_message(replace(job.task, key=key)))

    def _shutdown(self) -> None:
        with self._lock:
            for route in list(self._workers):
                self._send(route, encode("DISCONNECT"))
            pending = [j for j in self._queue] + [j for w in self._workers.values() for j in w.in_flight.values()]
            self._queue.clear()
        for job in pending:
            if not job.future.done():
                job.future.set_exception(TaskError("executor closed"))


def _settle(future: Future, result=None, error: Exception | None = None) -> None:
    """Resolve a future unless it was resolved or cancelled meanwhile."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def _seconds(value) -> float:
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return 0.0
