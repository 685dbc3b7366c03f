"""The ZeroMQ executor: the gateway's side of the worker protocol, behind the Executor interface.

One I/O thread owns the sockets. Workers connect to the bound ROUTER, or the executor connects out
to workers that listen. Tasks wait in a priority queue; each worker gets at most one task in flight
per process plus one queued. A worker that stops heartbeating is dropped and its tasks re-dispatched;
a task that fails deterministically is reported once, other failures are retried.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import socket as pysocket
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

import zmq

from backend.pipeline import BlockTask, Pipeline
from backend.protocol import ProtocolError, decode, encode, task_message

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


@dataclass
class _Remote:
    route: tuple[int, bytes]  # (socket index, routing id)
    host: str
    processes: int
    version: str
    last_heard: float
    in_flight: dict[str, _Job] = field(default_factory=dict)
    pipelines: set[str] = field(default_factory=set)
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    endpoint: str = ""


class ZmqExecutor:
    """Dispatch block tasks to ZeroMQ workers; see the module docstring."""

    def __init__(self, bind: str | None = "tcp://127.0.0.1:0", connect_to: tuple[str, ...] = (),
                 heartbeat_s: float = 1.0, liveness: int = 3, max_attempts: int = 3,
                 context: zmq.Context | None = None):
        self.context = context or zmq.Context.instance()
        self.heartbeat_s, self.liveness, self.max_attempts = heartbeat_s, liveness, max_attempts
        self._sockets: list[zmq.Socket] = []
        self.address = None
        if bind:
            inbound = self._router()
            inbound.bind(bind)
            self.address = inbound.getsockopt_string(zmq.LAST_ENDPOINT)
        self._outbound = self._router()
        self._pending_endpoints: dict[bytes, str] = {}
        for endpoint in connect_to:
            self.connect(endpoint)
        self._pipelines: dict[str, tuple[dict, list]] = {}
        self._queue: list[_Job] = []
        self._jobs: dict[str, _Job] = {}
        self._workers: dict[tuple[int, bytes], _Remote] = {}
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = pysocket.socketpair()
        self._counters = {"submitted": 0, "done": 0, "failed": 0, "redispatched": 0}
        self._thread = threading.Thread(target=self._loop, name="zmq-executor", daemon=True)
        self._thread.start()

    def _router(self) -> zmq.Socket:
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        self._sockets.append(sock)
        return sock

    def connect(self, endpoint: str) -> None:
        """Connect out to a worker started with ``--listen``."""
        route = uuid.uuid4().hex.encode()
        with getattr(self, "_lock", threading.Lock()):
            self._outbound.setsockopt(zmq.CONNECT_ROUTING_ID, route)
            self._outbound.connect(endpoint)
            self._pending_endpoints[route] = endpoint

    # -- the Executor interface (any thread) -------------------------------------------------------------
    def add_pipeline(self, pipeline: Pipeline) -> str:
        """Register a pipeline; it is sent to each worker before its first task."""
        fingerprint = pipeline.fingerprint()
        with self._lock:
            self._pipelines.setdefault(fingerprint, pipeline.to_message())
        return fingerprint

    def submit(self, task: BlockTask, priority: int = 0) -> Future:
        """Queue a task; lower ``priority`` values are dispatched first."""
        if task.pipeline not in self._pipelines:
            raise ValueError(f"task refers to pipeline {task.pipeline}, which was never added")
        future: Future = Future()
        job = _Job(priority, next(self._seq), task, future)
        with self._lock:
            heapq.heappush(self._queue, job)
            self._counters["submitted"] += 1
        self._wake()
        return future

    def cancel(self, future: Future) -> bool:
        """Cancel a queued task; tasks already on a worker finish and are discarded."""
        with self._lock:
            return future.cancel()

    def status(self) -> dict:
        """Workers (host, processes, heartbeat age, blocks done, blocks/s), queue depth and counters."""
        now = time.monotonic()
        with self._lock:
            workers = [{"host": w.host, "processes": w.processes, "version": w.version, "endpoint": w.endpoint,
                        "state": "busy" if w.in_flight else "idle", "heartbeat_age_s": round(now - w.last_heard, 2),
                        "in_flight": len(w.in_flight), "blocks_done": w.done,
                        "blocks_per_s": round(w.done / max(now - w.started, 1e-6), 2)}
                       for w in self._workers.values()]
            return {"kind": "zmq", "address": self.address, "workers": workers, "queued": len(self._queue),
                    "processes": sum(w["processes"] for w in workers), **self._counters}

    def wait_for_workers(self, processes: int, timeout: float) -> bool:
        """Block until workers with at least ``processes`` processes are registered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status()["processes"] >= processes:
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        """Say goodbye to the workers, fail what is pending and stop the I/O thread."""
        self._stop.set()
        self._wake()
        self._thread.join(timeout=10)
        for sock in self._sockets:
            sock.close(linger=0)
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> ZmqExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the I/O thread ------------------------------------------------------------------------------------
    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _loop(self) -> None:
        poller = zmq.Poller()
        for sock in self._sockets:
            poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        last_beat = 0.0
        while not self._stop.is_set():
            events = dict(poller.poll(self.heartbeat_s * 1000 / 4))
            if self._wake_r.fileno() in events:
                self._wake_r.recv(65536)
            for index, sock in enumerate(self._sockets):
                while sock in events and sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                    self._receive((index, frames[0]), frames[1:])
            now = time.monotonic()
            with self._lock:
                self._expire(now)
                self._dispatch()
            if now - last_beat >= self.heartbeat_s:
                self._beat()
                last_beat = now
        self._shutdown()

    def _send(self, route: tuple[int, bytes], frames: list) -> None:
        try:
            self._sockets[route[0]].send_multipart([route[1], *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("could not send to a worker: %s", exc)

    def _beat(self) -> None:
        with self._lock:
            routes = list(self._workers)
        routes += [(len(self._sockets) - 1, r) for r in self._pending_endpoints]
        for route in routes:
            self._send(route, encode("HEARTBEAT"))

    def _receive(self, route: tuple[int, bytes], frames: list[bytes]) -> None:
        try:
            message = decode(frames)
        except ProtocolError as exc:
            log.warning("dropped a malformed message: %s", exc)
            return
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
                    self._complete(worker, message)

    def _register(self, route, fields: dict) -> None:
        if route in self._workers:
            self._drop(route, "re-registered")
        endpoint = self._pending_endpoints.pop(route[1], "") if route[0] == len(self._sockets) - 1 else ""
        try:
            processes = max(1, int(fields.get("processes", 1)))
        except (TypeError, ValueError):
            processes = 1
        self._workers[route] = _Remote(route, str(fields.get("host", "?")), processes,
                                       str(fields.get("version", "?")), time.monotonic(), endpoint=endpoint)
        log.info("worker %s registered with %d processes", fields.get("host"), processes)

    def _complete(self, worker: _Remote, message) -> None:
        job = worker.in_flight.pop(str(message.fields.get("key")), None)
        if job is None:
            return
        if message.type == "RESULT" and message.arrays:
            worker.done += 1
            self._counters["done"] += 1
            if not job.future.done():
                job.future.set_result(message.arrays[0])
        elif message.fields.get("deterministic") or job.attempts + 1 >= self.max_attempts:
            self._counters["failed"] += 1
            if not job.future.done():
                job.future.set_exception(TaskError(str(message.fields.get("message", "task failed"))))
        else:
            self._requeue(job)

    def _requeue(self, job: _Job) -> None:
        job.attempts += 1
        self._counters["redispatched"] += 1
        heapq.heappush(self._queue, job)

    def _drop(self, route, why: str) -> None:
        worker = self._workers.pop(route)
        log.warning("worker %s dropped (%s); re-dispatching %d tasks", worker.host, why, len(worker.in_flight))
        for job in worker.in_flight.values():
            job.attempts -= 1  # a lost worker is not the task's fault
            self._requeue(job)
        if worker.endpoint:  # a worker we connected to: keep knocking until it is back
            self._pending_endpoints[route[1]] = worker.endpoint

    def _expire(self, now: float) -> None:
        limit = self.heartbeat_s * self.liveness
        for route in [r for r, w in self._workers.items() if now - w.last_heard > limit]:
            self._drop(route, f"silent for {limit:.0f} s")

    def _dispatch(self) -> None:
        for worker in sorted(self._workers.values(), key=lambda w: len(w.in_flight) / w.processes):
            while len(worker.in_flight) < 2 * worker.processes and self._queue:
                job = heapq.heappop(self._queue)
                if job.future.done():
                    continue
                if not job.future.running():
                    job.future.set_running_or_notify_cancel()
                fingerprint = job.task.pipeline
                if fingerprint not in worker.pipelines:
                    header, arrays = self._pipelines[fingerprint]
                    self._send(worker.route, encode("PIPELINE", {"pipeline": header}, arrays))
                    worker.pipelines.add(fingerprint)
                worker.in_flight[str(job.seq)] = job
                self._send(worker.route, task_message(replace(job.task, key=str(job.seq))))

    def _shutdown(self) -> None:
        with self._lock:
            for route in list(self._workers):
                self._send(route, encode("DISCONNECT"))
            pending = [j for j in self._queue] + [j for w in self._workers.values() for j in w.in_flight.values()]
            self._queue.clear()
        for job in pending:
            if not job.future.done():
                job.future.set_exception(TaskError("executor closed"))
