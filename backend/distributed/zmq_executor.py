"""The ZeroMQ executor: the gateway's side of the worker protocol, behind the Executor interface.

One I/O thread owns every socket. Local workers connect to a plain loopback/ipc ROUTER (``bind``);
remote workers connect to a CurveZMQ ROUTER (:meth:`ZmqExecutor.listen`) or are reached by
connecting out to a worker that listens (:meth:`ZmqExecutor.connect`, CurveZMQ when given the
worker's key). Who gets which task, and when a task or worker has failed, is decided by the
:class:`~backend.distributed.roster.Roster` under the executor's lock. A turn's futures are settled on a
completion thread as one batch (a slow cache write never delays heartbeats); the loop survives errors.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import zmq

from backend.compute.pipeline import BlockTask, Pipeline
from backend.config import ExecutorConfig
from backend.distributed.executor import Executor, ZmqStatus
from backend.distributed.futures import TaskError, TaskFuture, guarded, settle
from backend.distributed.handshake import REFUSED_OUR_KEY, HandshakeMonitor
from backend.distributed.pipeline_refs import PipelineRefs
from backend.distributed.protocol import (
    MAX_MESSAGE_BYTES,
    ProtocolError,
    VersionMismatch,
    decode,
    encode,
    task_message,
)
from backend.distributed.roster import NoWorkers, Roster, Settle
from backend.distributed.security import Authenticator, CurveIdentity, is_local
from backend.distributed.settling import settle_all
from backend.distributed.wakeup import Wakeup

log = logging.getLogger(__name__)
__all__ = ["NoWorkers", "TaskError", "ZmqExecutor"]


class ZmqExecutor(Executor):
    """Dispatch block tasks to ZeroMQ workers; see the module docstring.

    With ``fail_without_workers``, queued tasks fail once no worker was registered for the configuration's
    ``worker_timeout_s`` (headless runs); otherwise they wait for workers to come.
    """

    def __init__(self, bind: str | None = "tcp://127.0.0.1:0", connect_to: tuple[str, ...] = (),
                 identity: CurveIdentity | None = None, config: ExecutorConfig = ExecutorConfig(),
                 fail_without_workers: bool = False):
        self.context = zmq.Context()
        self.identity = identity
        self.config = config
        self.heartbeat_s = config.heartbeat_s
        self.roster = Roster(config, fail_without_workers)
        self._completions = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zmq-completions")
        self.authenticator = Authenticator(self.context, identity) if identity else None
        self._sockets: dict[int, zmq.Socket] = {}
        self._socket_numbers = itertools.count()
        self._outbound: dict[int, tuple[str, bytes]] = {}  # socket number -> (worker endpoint, routing id)
        self._monitors: dict[int, HandshakeMonitor] = {}  # socket number -> its CURVE handshake monitor
        self._bound: dict[int, tuple[str, bool]] = {}  # socket number -> (address, secure) of our binds
        self._commands: queue.Queue = queue.Queue()
        self._messages: dict[str, tuple[dict, list]] = {}  # pipeline fingerprint -> its PIPELINE message
        self._refs = PipelineRefs()  # releases are applied on the I/O thread
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when a worker registers or is refused
        self._stop = threading.Event()
        self._wakeup = Wakeup()
        self._refused: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="zmq-executor", daemon=True)
        self._thread.start()
        try:
            self.address = self._call(lambda: self._bind(bind, secure=False)).result(10) if bind else None
            for endpoint in connect_to:
                self.connect(endpoint)
        except BaseException:  # nothing is left running: the thread, the context and the authenticator stop
            self.close()
            raise

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
                for route in [r for r in self.roster.workers if r[0] == number]:
                    self._send(route, encode("DISCONNECT"))
                    self.roster.drop(route, "disconnected by the user")
            del self._outbound[number]
            if number in self._monitors:
                self._monitors.pop(number).close()
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
        number = self._number(sock)
        try:
            if secure:
                self.identity.make_server(sock)
            sock.bind(endpoint)
            address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            if secure:
                self._monitors[number] = HandshakeMonitor(sock, address)
        except BaseException:
            self._drop_socket(number)
            raise
        self._bound[number] = (address, secure)
        return address

    def _connect(self, endpoint: str, server_key: bytes | None) -> None:
        sock = self._new_socket()
        number = self._number(sock)
        routing_id = uuid.uuid4().hex.encode()
        try:
            if server_key is not None:
                self.identity.make_client(sock, server_key)
            sock.setsockopt(zmq.CONNECT_ROUTING_ID, routing_id)
            if server_key is not None:
                self._monitors[number] = HandshakeMonitor(sock, endpoint)
            sock.connect(endpoint)
        except BaseException:
            self._drop_socket(number)
            raise
        self._outbound[number] = (endpoint, routing_id)

    def _drop_socket(self, number: int) -> None:
        """Close a socket that could not be set up, and its monitor: no dead socket stays in the poll set."""
        monitor = self._monitors.pop(number, None)
        if monitor is not None:
            monitor.close()
        self._sockets.pop(number).close(linger=0)

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
            if self._refs.add(fingerprint):
                self._messages[fingerprint] = pipeline.to_message()
                self.roster.pipelines[fingerprint] = pipeline
        return fingerprint

    def remove_pipeline(self, fingerprint: str) -> None:
        """Give back a reference; the last one drops the pipeline once its tasks are settled (on the I/O thread)."""
        self._refs.release(fingerprint)
        self._wakeup.wake()

    def submit(self, task: BlockTask, priority: int = 0) -> TaskFuture:
        """Queue a task; lower ``priority`` values are dispatched first (after close: an already failed future)."""
        with self._lock:
            if not self._refs.known(task.pipeline):
                raise ValueError(f"task refers to pipeline {task.pipeline}, which was never added")
            if self._stop.is_set():
                future = TaskFuture()
                settle(future, error=TaskError("executor closed"))
                return future
            future = self.roster.push(task, priority)
            self._refs.task_started(task.pipeline)
        future.add_done_callback(lambda _, fingerprint=task.pipeline: self._refs.task_ended(fingerprint))
        self._wakeup.wake()
        return future

    def cancel(self, future: TaskFuture) -> bool:
        """Cancel a queued task; tasks already on a worker finish and are discarded."""
        return future.cancel()  # fails once dispatched: the roster marks the future running first

    def status(self) -> ZmqStatus:
        """Workers (host, processes, state, heartbeat age, blocks done, blocks/s), queue depth, counters."""
        with self._lock:
            refused = self._refused + (self.authenticator.refused if self.authenticator else [])
            now = self.roster.clock()
            waiting = self.roster.waiting()
            counters = {k: round(v, 3) if isinstance(v, float) else v for k, v in self.roster.counters.items()}
            return ZmqStatus("zmq", self.address, self.roster.workers_status(now), queued=len(waiting),
                             no_workers_s=self.roster.no_workers_s(now), lost=self.roster.lost_status(now),
                             refused=tuple(refused[-20:]),
                             queued_by_priority={p: waiting.count(p) for p in sorted(set(waiting))}, **counters)

    def wait_for_workers(self, processes: int, timeout: float) -> bool:
        """Block until workers with at least ``processes`` processes are registered."""
        with self._changed:
            return self._changed.wait_for(
                lambda: sum(w.processes for w in self.roster.workers.values()) >= processes, timeout)

    def silence(self, pid: int) -> float | None:
        """Seconds since the local worker process ``pid`` last spoke (None: it never registered)."""
        with self._lock:
            heard = self.roster.heard.get(pid)
            return None if heard is None else self.roster.clock() - heard

    def wait_for_change(self, timeout: float) -> None:
        """Block until a worker registers or a peer is refused, or ``timeout`` seconds pass."""
        with self._changed:
            self._changed.wait(timeout)

    def close(self) -> None:
        """Say goodbye to the workers, fail what is pending, stop the I/O thread and free the sockets."""
        self._stop.set()
        self._wakeup.wake()
        self._thread.join(timeout=10)
        self._completions.shutdown(wait=True)  # every future is settled now (the I/O thread failed the rest)
        for monitor in self._monitors.values():
            monitor.close()
        for sock in self._sockets.values():
            sock.close(linger=0)
        if self.authenticator:
            self.authenticator.stop()
        self.context.term()
        self._wakeup.close()

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
        for monitor in self._monitors.values():
            poller.register(monitor.socket, zmq.POLLIN)
        poller.register(self._wakeup, zmq.POLLIN)
        events = dict(poller.poll(self.heartbeat_s * 1000 / 4))
        if self._wakeup.fileno() in events:
            self._wakeup.drain()
        for number, monitor in self._monitors.items():
            for failure in monitor.read() if monitor.socket in events else ():
                self._refuse(self._explain(monitor.endpoint, failure, outbound=number in self._outbound))
        received = []
        for number, sock in list(self._sockets.items()):
            while sock in events and sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                frames = sock.recv_multipart(zmq.NOBLOCK)
                received.append(((number, frames[0]), self._decode(frames[1:])))
        with self._lock:  # one turn's messages booked at once, their futures settled in one hand-over
            settles = [s for route, message in received if message for s in self._book(route, message)]
            for fingerprint in self._refs.collect():
                del self._messages[fingerprint]
                self.roster.forget(fingerprint)
            settles += self.roster.expire(self.roster.clock())
            for worker, key, job, needs_pipeline in self.roster.dispatch():
                if needs_pipeline:
                    header, arrays = self._messages[job.task.pipeline]
                    self._send(worker.route, encode("PIPELINE", {"pipeline": header}, arrays))
                self._send(worker.route, task_message(replace(job.task, key=key), 2 * self.roster.deadline()))
        self._settle_later(settles)

    def _settle_later(self, settles: list[Settle]) -> None:
        """Settle futures on the completion thread (their callbacks may be slow and may call us), in one go."""
        if settles:
            self._completions.submit(settle_all, settles)

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
            routes = set(self.roster.workers)
        # workers we connect to wait for us to speak first; keep knocking until they answer READY
        routes.update((number, routing_id) for number, (_, routing_id) in self._outbound.items())
        for route in routes:
            self._send(route, encode("HEARTBEAT", {"heartbeat_s": self.heartbeat_s}))

    def _decode(self, frames: list[bytes]):
        """The message in ``frames``; None (refused or counted as dropped) if it cannot be read."""
        try:
            return decode(frames)
        except VersionMismatch as exc:
            self._refuse(f"refused a worker speaking {exc}")
        except ProtocolError as exc:
            with self._lock:
                self.roster.counters["dropped_messages"] += 1
            log.warning("dropped a malformed message: %s", exc)

    def _book(self, route: tuple[int, bytes], message) -> list[Settle]:
        """Act on one decoded message (under the lock); what settles the future it completes, if any."""
        worker = self.roster.workers.get(route)
        reason = message.fields.get("reason") if message.type == "DISCONNECT" else None
        if isinstance(reason, str) and route[0] in self._outbound and worker is None:
            self._refused = (self._refused + [f"{self._outbound[route[0]][0]}: {reason[:200]}"])[-20:]
            log.warning("refused by %s", self._refused[-1])  # e.g. a listening worker busy with another gateway
            self._changed.notify_all()
        if message.type == "READY":
            endpoint, kind = self._peer(route[0])
            if self.roster.register(route, message.fields, endpoint, kind) is not None:
                self._changed.notify_all()
        elif worker is None:
            if message.type != "DISCONNECT":
                self._send(route, encode("DISCONNECT"))  # unknown peer: ask it to re-register
        elif message.type == "DISCONNECT":
            self.roster.drop(route, "said goodbye")
        else:
            self.roster.heard_from(worker)
            settle_one = self.roster.complete(worker, message) if message.type in ("RESULT", "ERROR") else None
            return [settle_one] if settle_one else []
        return []

    def _peer(self, number: int) -> tuple[str, str]:
        """How a worker on socket ``number`` is reached, and whether it is one of our local ones."""
        if number in self._outbound:
            return self._outbound[number][0], "remote"
        address, secure = self._bound.get(number, ("", True))
        return (f"connected to {address}", "remote") if secure else ("local", "local")

    def _explain(self, endpoint: str, failure: str, outbound: bool) -> str:
        ours = self.identity.public.decode()
        if not outbound:  # our listening socket; refused keys are reported by the authenticator
            return (f"a worker failed the encrypted handshake on {endpoint}: start it with --gateway-key '{ours}'"
                    if failure != REFUSED_OUR_KEY else "")
        if failure == REFUSED_OUR_KEY:
            return f"{endpoint}: the worker refused our key; start it with --gateway-key '{ours}'"
        return (f"{endpoint}: the encrypted handshake failed; is the key given for it that worker's key "
                "(ilastik-worker --print-key)?")

    def _refuse(self, why: str) -> None:
        if not why:
            return
        log.warning("%s", why)
        with self._lock:
            self._refused = (self._refused + [why])[-20:]
            self._changed.notify_all()

    def _shutdown(self) -> None:
        with self._lock:
            for route in list(self.roster.workers):
                self._send(route, encode("DISCONNECT"))
            settles = self.roster.close()
        for settle_one in settles:
            guarded(settle_one)

