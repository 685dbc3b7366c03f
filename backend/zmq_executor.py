"""The ZeroMQ executor: the gateway's side of the worker protocol, behind the Executor interface.

One I/O thread owns every socket. Local workers connect to a plain loopback/ipc ROUTER (``bind``);
remote workers connect to a CurveZMQ ROUTER (:meth:`ZmqExecutor.listen`) or are reached by
connecting out to a worker that listens (:meth:`ZmqExecutor.connect`, CurveZMQ when given the
worker's key). Tasks wait in a priority queue; each worker gets at most one task in flight per
process plus one queued. A worker that stops heartbeating is dropped and its tasks re-dispatched;
a task that fails deterministically is reported once, other failures are retried.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field, replace

import zmq

from backend.pipeline import BlockTask, Pipeline
from backend.protocol import ProtocolError, VersionMismatch, decode, encode, peer_interval, task_message
from backend.security import Authenticator, CurveIdentity, is_local
from backend.wakeup import Wakeup

log = logging.getLogger(__name__)


class TaskError(RuntimeError):
    """A task that failed on a worker (the message says why)."""


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
    pipelines: set[str] = field(default_factory=set)
    done: int = 0
    started: float = field(default_factory=time.monotonic)


class ZmqExecutor:
    """Dispatch block tasks to ZeroMQ workers; see the module docstring."""

    def __init__(self, bind: str | None = "tcp://127.0.0.1:0", connect_to: tuple[str, ...] = (),
                 identity: CurveIdentity | None = None, heartbeat_s: float = 1.0, liveness: int = 3,
                 max_attempts: int = 3):
        self.context = zmq.Context()
        self.identity = identity
        self.heartbeat_s, self.liveness, self.max_attempts = heartbeat_s, liveness, max_attempts
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
        self._counters = {"submitted": 0, "done": 0, "failed": 0, "redispatched": 0, "compute_s": 0.0,
                          "roundtrip_s": 0.0}
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
                        "state": "busy" if w.in_flight else "idle", "heartbeat_age_s": round(now - w.last_heard, 2),
                        "in_flight": len(w.in_flight), "blocks_done": w.done,
                        "blocks_per_s": round(w.done / max(now - w.started, 1e-6), 2)}
                       for w in self._workers.values()]
            refused = self._refused + (self.authenticator.refused if self.authenticator else [])
            queued = sum(not job.future.done() for job in self._queue)  # cancelled jobs leave when popped
            return {"kind": "zmq", "address": self.address, "workers": workers, "queued": queued,
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
                self._dispatch()
            if now - last_beat >= self.heartbeat_s:
                self._beat()
                last_beat = now
        self._shutdown()

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
            log.warning("dropped a malformed message: %s", exc)
            return
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
        if settle is not None:
            settle()  # outside the lock: the future's callbacks may take their own locks and call us

    def _refuse(self, why: str) -> None:
        log.warning("refused %s", why)
        with self._lock:
            self._refused = (self._refused + [why])[-20:]
            self._changed.notify_all()

    def _register(self, route, fields: dict) -> None:
        if route in self._workers:
            self._drop(route, "re-registered")
        try:
            processes = max(1, int(fields.get("processes", 1)))
        except (TypeError, ValueError):
            processes = 1
        self._workers[route] = _Remote(route, str(fields.get("host", "?")), processes,
                                       str(fields.get("version", "?")), time.monotonic(),
                                       endpoint=self._outbound.get(route[0], ("", b""))[0],
                                       heartbeat_s=peer_interval(fields))
        self._changed.notify_all()
        log.info("worker %s registered with %d processes", fields.get("host"), processes)

    def _complete(self, worker: _Remote, message) -> Callable[[], None] | None:
        """Book a RESULT or ERROR (under the lock); returns what settles the task's future."""
        job = worker.in_flight.pop(str(message.fields.get("key")), None)
        if job is None:
            return None
        if message.type == "RESULT" and message.arrays:
            worker.done += 1
            compute_s = _seconds(message.fields.get("compute_s"))
            self._counters["done"] += 1
            self._counters["compute_s"] += compute_s
            self._counters["roundtrip_s"] += time.monotonic() - job.sent
            job.future.compute_s = compute_s
            return lambda: _settle(job.future, result=message.arrays[0])
        if message.fields.get("deterministic") or job.attempts + 1 >= self.max_attempts:
            self._counters["failed"] += 1
            error = TaskError(str(message.fields.get("message", "task failed")))
            return lambda: _settle(job.future, error=error)
        self._requeue(job)
        return None

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
        for route, worker in list(self._workers.items()):
            limit = max(self.heartbeat_s, worker.heartbeat_s) * self.liveness  # the slower side sets the pace
            if now - worker.last_heard > limit:
                self._drop(route, f"silent for {limit:.1f} s")

    def _dispatch(self) -> None:
        for worker in sorted(self._workers.values(), key=lambda w: len(w.in_flight) / w.processes):
            while len(worker.in_flight) < 2 * worker.processes and self._queue:
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
