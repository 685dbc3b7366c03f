"""The ZeroMQ worker: one DEALER socket speaking the protocol, computing on a local process pool.

The socket loop only moves messages and heartbeats (Paranoid Pirate: 1 s interval, liveness 3, any
message counts as a heartbeat, reconnect with backoff), so it never waits on compute. It keeps the
``pipelines_kept`` pipelines last used (live training sends one per retrain); a task of one dropped is
answered with "unknown pipeline", and the gateway sends it again. A listening
worker binds a ROUTER, so it knows which gateway sent what: it serves exactly one gateway at a time
and answers any other with a DISCONNECT that says why, until the first leaves or falls silent.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass

import zmq

from backend.backoff import Backoff
from backend.compute.objects_pipeline import pipeline_from_message
from backend.compute.pipeline import Pipeline
from backend.config import WorkerConfig
from backend.distributed.handshake import HUNG_UP, REFUSED_OUR_KEY, HandshakeMonitor
from backend.distributed.local_executor import LocalExecutor
from backend.distributed.protocol import (
    MAX_MESSAGE_BYTES,
    Message,
    ProtocolError,
    decode,
    encode,
    peer_interval,
    task_deadline,
    task_from_message,
)
from backend.distributed.security import Authenticator, CurveIdentity, is_local
from backend.distributed.wakeup import Wakeup
from backend.errors import is_deterministic
from backend.wording import counted

log = logging.getLogger(__name__)
announce = logging.getLogger(__name__ + ".status")  # the one line that says the worker is up (shown by default)
PROTOCOL_NAME = "ilastik-desktop/1"


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker reaches its gateway, how much it computes, and its timing (the configuration's section)."""

    connect: str | None = None
    listen: str | None = None
    processes: int = 1
    timing: WorkerConfig = WorkerConfig()
    identity: CurveIdentity | None = None  # our keys; in listen mode ``allowed`` holds the gateways' keys
    server_key: bytes | None = None  # the gateway's public key (connect mode)

    @property
    def secure(self) -> bool:
        """Whether this worker talks CurveZMQ."""
        return self.server_key is not None if self.connect else bool(self.identity and self.identity.allowed)


class Worker:
    """Serve block tasks until :meth:`stop` is called (from any thread)."""

    def __init__(self, config: WorkerOptions):
        if bool(config.connect) == bool(config.listen):
            raise ValueError("give exactly one of connect and listen")
        endpoint = config.connect or config.listen
        if not config.secure and not is_local(endpoint):
            raise ValueError(f"{endpoint} is not on this machine: give the gateway's public key (--gateway-key)")
        if config.secure and config.identity is None:
            raise ValueError("an encrypted connection needs this worker's key pair")
        self.config = config
        self.context = zmq.Context()
        self.authenticator = Authenticator(self.context, config.identity) if config.secure and config.listen \
            else None
        self.pool = LocalExecutor(workers=config.processes, config=config.timing)
        self.pipelines: OrderedDict[str, None] = OrderedDict()  # the pipelines we keep, least recently used first
        self._stopping = False  # a plain flag: stop() must be safe in a signal handler, so it takes no lock
        self._done: list[tuple[str, bytes | None, Future]] = []  # (task key, gateway it came from, future)
        self._done_lock = threading.Lock()
        self._wakeup = Wakeup()
        self.address: str | None = None
        self.completed = 0
        self._peer_interval = 0.0
        self._gateway: bytes | None = None  # listening: the routing id of the gateway we serve
        self.dropped_messages = 0

    def stop(self) -> None:
        """Ask the loop to send DISCONNECT and end; safe to call from any thread and from signal handlers."""
        self._stopping = True
        self._wakeup.wake()

    def _open(self) -> zmq.Socket:
        sock = self.context.socket(zmq.ROUTER if self.config.listen else zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        if self.config.connect:
            sock.setsockopt(zmq.IDENTITY, uuid.uuid4().hex.encode())
        if self.config.secure and self.config.listen:
            self.config.identity.make_server(sock)
        elif self.config.secure:
            self.config.identity.make_client(sock, self.config.server_key)
        try:
            if self.config.listen:
                sock.bind(self.config.listen)
                self.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            else:
                sock.connect(self.config.connect)
                self.address = self.config.connect
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        return sock

    def _ready(self) -> list[bytes]:
        return encode("READY", {"processes": self.config.processes, "version": PROTOCOL_NAME,
                                "host": platform.node(), "pid": os.getpid(),
                                "heartbeat_s": self.config.timing.heartbeat_s})

    def run(self) -> None:
        """The socket loop; returns after :meth:`stop`."""
        backoff = Backoff(self.config.timing.reconnect_first_s, self.config.timing.reconnect_max_s)
        try:
            while not self._stopping:
                sock = self._open()
                monitor = HandshakeMonitor(sock, self.address, bool(self.config.listen)) if self.config.secure \
                    else None
                try:
                    self._wait_for_pool()  # bound or connected, but silent until the compute processes are warm
                    if self.config.listen:  # bound once: _serve returns only when the worker stops
                        announce.info("%s", self.status_line())
                    if self.config.connect:
                        _send(sock, self._ready())
                    if self._serve(sock, monitor):
                        backoff.reset()
                finally:
                    if monitor:
                        monitor.close()
                    sock.close(linger=0)
                if not self._stopping:
                    pause = backoff.next()
                    log.warning("gateway silent for %d heartbeats; reconnecting in %.1f s", self.config.timing.liveness,
                                pause)
                    self._wakeup.wait(pause)
        finally:
            self.pool.close()
            if self.authenticator:
                self.authenticator.stop()
            self.context.term()
            self._wakeup.close()

    def status_line(self) -> str:
        """Where this worker listens, its public key if encrypted, and its compute processes."""
        key = (f"public key {self.config.identity.public.decode()}" if self.config.secure
               else "unencrypted (this machine only)")
        count = self.config.processes
        return f"listening at {self.address}, {key}, {counted(count, 'process')}"

    def _wait_for_pool(self) -> None:
        """Announce ourselves only once the compute processes are warm (or after the warm-up limit)."""
        limit = self.config.timing.warm_up_limit_s
        deadline = time.monotonic() + limit
        while not self._stopping and not self.pool.wait_ready(0.2):
            if time.monotonic() > deadline:
                log.warning("compute processes still starting after %.0f s; serving anyway", limit)
                return

    def _serve(self, sock: zmq.Socket, monitor: HandshakeMonitor | None = None) -> bool:
        """Handle the gateway until we stop (True) or, when connecting, until it goes silent (False)."""
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wakeup, zmq.POLLIN)
        if monitor:
            poller.register(monitor.socket, zmq.POLLIN)
        interval = self.config.timing.heartbeat_s
        last_heard = time.monotonic() if self.config.connect else None
        last_sent = time.monotonic()
        heard_any = False
        while not self._stopping:
            events = dict(poller.poll(interval * 1000 / 2))
            if self._wakeup.fileno() in events:
                self._wakeup.drain()
            if monitor and monitor.socket in events:
                for failure in monitor.read():
                    if failure == HUNG_UP:
                        log.info("a connection to %s closed before the encrypted handshake (a connection test)",
                                 self.address)
                    elif self.config.connect or failure != REFUSED_OUR_KEY:  # refused gateways: the authenticator
                        log.error("%s", self._explain(failure))
            if sock in events:
                while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=True)
                    message = self._decode(frames[1:] if self.config.listen else frames)
                    if message is None or (self.config.listen and not self._admit(sock, frames[0], last_heard)):
                        continue
                    last_heard = time.monotonic()
                    if not heard_any and self.config.listen:
                        self._send(sock, self._ready())
                    heard_any = True
                    if self._handle(sock, message) == "DISCONNECT":
                        if self.config.connect:
                            self._send(sock, self._ready())  # a restarted gateway does not know us: register again
                        else:
                            last_heard, heard_any, self._gateway = None, False, None  # greet the next gateway
            self._send_results(sock)
            now = time.monotonic()
            if now - last_sent >= interval and last_heard is not None:
                self._send(sock, encode("HEARTBEAT"))
                last_sent = now
            silence = max(interval, self._peer_interval) * self.config.timing.liveness  # the slower side sets the pace
            if last_heard is not None and now - last_heard > silence:
                if self.config.connect:
                    return heard_any  # reconnect with back-off
                # listening: keep the bound socket (re-binding the port can fail) and wait for a gateway
                log.warning("gateway silent for %d heartbeats; waiting for a gateway", self.config.timing.liveness)
                last_heard, heard_any, self._gateway = None, False, None
        if last_heard is not None:
            self._send(sock, encode("DISCONNECT"))
        return True

    def _explain(self, failure: str) -> str:
        endpoint, key = self.config.connect, self.config.identity.public.decode()
        if self.config.listen:
            return (f"a gateway failed the encrypted handshake on {self.address}: give it this worker's key "
                    f"'{key}' (e.g. --connect tcp://HOST:PORT,{key})")
        if failure == REFUSED_OUR_KEY:
            return (f"the gateway at {endpoint} refused this worker's key '{key}': allow it there (Connect workers "
                    f"dialog, --worker-key '{key}' or a line in its authorized_workers file)")
        return (f"the encrypted handshake with the gateway at {endpoint} failed: check --gateway-key (the gateway "
                "shows its key in Connect workers; 'ilastik-desktop --print-key' prints it)")

    def _admit(self, sock: zmq.Socket, peer: bytes, last_heard: float | None) -> bool:
        """Listening: serve the first gateway that speaks; refuse others while it is there."""
        if self._gateway is None or last_heard is None:
            self._gateway = peer
        if peer == self._gateway:
            return True
        _send(sock, [peer, *encode("DISCONNECT", {"reason": "busy: this worker serves another gateway"})])
        return False

    def _send(self, sock: zmq.Socket, frames: list[bytes], gateway: bytes | None = None) -> bool:
        """Send to our gateway (listening: to ``gateway`` or the one we serve)."""
        if self.config.connect:
            return _send(sock, frames)
        target = gateway or self._gateway
        return target is not None and _send(sock, [target, *frames])

    def _decode(self, frames: list[bytes]) -> Message | None:
        """The message in ``frames``, or None (dropped, counted and logged) if it is malformed."""
        try:
            return decode(frames)
        except ProtocolError as exc:
            self.dropped_messages += 1
            log.warning("dropped a malformed message (%d so far): %s", self.dropped_messages, exc)
            return None

    def _handle(self, sock: zmq.Socket, message: Message) -> str:
        """Act on one message from the gateway; returns its type."""
        if message.type == "HEARTBEAT":
            self._peer_interval = peer_interval(message.fields)
        elif message.type == "PIPELINE":
            try:
                self._keep(pipeline_from_message(message.fields["pipeline"], message.arrays))
            except (KeyError, TypeError, ValueError) as exc:
                self.dropped_messages += 1
                log.warning("dropped a malformed pipeline: %s", exc)
        elif message.type == "TASK":
            key = str(message.fields.get("key", ""))[:200]
            try:
                task = task_from_message(message)
            except ProtocolError as exc:  # the same message would fail again
                self.dropped_messages += 1
                self._send(sock, encode("ERROR", {"key": key, "message": str(exc)[:500], "deterministic": True}))
                return message.type
            if task.pipeline not in self.pipelines:  # lost on the way, dropped, or we restarted: ask for it again
                self._send(sock, encode("ERROR", {"key": key, "message": "unknown pipeline", "deterministic": False,
                                                  "missing_pipeline": task.pipeline}))
                return message.type
            self.pipelines.move_to_end(task.pipeline)
            future = self.pool.submit(task, deadline_s=task_deadline(message.fields))
            gateway = self._gateway
            future.add_done_callback(lambda f, key=task.key: self._finished(key, gateway, f))
        elif message.type == "DISCONNECT":
            log.info("the gateway said goodbye or does not know us")
        return message.type

    def _keep(self, pipeline: Pipeline) -> None:
        """Add a pipeline (the most recently used now); drop the least recently used beyond the limit (the
        pool deletes its file once its pending tasks end)."""
        fingerprint = pipeline.fingerprint()
        if fingerprint not in self.pipelines:
            self.pool.add_pipeline(pipeline)
            self.pipelines[fingerprint] = None
        self.pipelines.move_to_end(fingerprint)
        while len(self.pipelines) > self.config.timing.pipelines_kept:
            self.pool.remove_pipeline(self.pipelines.popitem(last=False)[0])

    def _finished(self, key: str, gateway: bytes | None, future: Future) -> None:
        with self._done_lock:
            self._done.append((key, gateway, future))
        self._wakeup.wake()

    def _send_results(self, sock: zmq.Socket) -> None:
        with self._done_lock:
            done, self._done = self._done, []
        for key, gateway, future in done:  # each result goes to the gateway that asked for it
            if future.cancelled():
                continue
            error = future.exception()
            if error is None:
                compute_s = round(getattr(future, "compute_s", 0.0), 4)
                self._send(sock, encode("RESULT", {"key": key, "compute_s": compute_s}, [future.result()]), gateway)
                self.completed += 1
            else:
                self._send(sock, encode("ERROR", {"key": key, "message": f"{type(error).__name__}: {error}",
                                                   "deterministic": is_deterministic(error)}), gateway)


def _send(sock: zmq.Socket, frames: list[bytes]) -> bool:
    """Send without blocking; False if the message was dropped (no gateway connected, or its queue is full).

    A blocking send would stall heartbeats, silence detection and stop(); the gateway re-dispatches
    whatever a lost result was for.
    """
    try:
        sock.send_multipart(frames, zmq.NOBLOCK)
        return True
    except zmq.Again:
        return False
