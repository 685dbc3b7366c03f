"""Why an encrypted connection does not come up: CurveZMQ handshake failures seen by the connecting side.

A CURVE client whose key the server does not allow, or that was given the wrong server key, otherwise
sees only silence. ZeroMQ's socket monitor reports both: the server's refusal of our key
(``HANDSHAKE_FAILED_AUTH``, status 400) and a server that cannot read our greeting because we encrypted
it for another key (the connection closes during the handshake). This module turns those events into
one sentence per kind of failure, until a handshake succeeds.

On a listening (server) socket, a peer that closes the connection before it sent its greeting is no failed
handshake: a plain TCP connection test (the app's check that the worker is reachable) does exactly that, and
ZeroMQ reports it as ``HANDSHAKE_FAILED_NO_DETAIL``. A peer that greets with the wrong key or no encryption
is reported as ``HANDSHAKE_FAILED_PROTOCOL``; a refused key as ``HANDSHAKE_FAILED_AUTH``.
"""

from __future__ import annotations

import zmq
from zmq.utils.monitor import recv_monitor_message

_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
           | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_SUCCEEDED)
REFUSED_OUR_KEY = "refused our key"
WRONG_SERVER_KEY = "handshake failed"
HUNG_UP = "closed before the handshake"  # listening: a connection test, not a failure


class HandshakeMonitor:
    """Watches one CURVE socket (``listening``: a bound one); :meth:`read` returns new failures as short
    sentences."""

    def __init__(self, sock: zmq.Socket, endpoint: str, listening: bool = False):
        self.endpoint, self.listening = endpoint, listening
        self.socket = sock.get_monitor_socket(_EVENTS)
        self._reported: set[str] = set()

    def read(self) -> list[str]:
        """Failures seen since the last call (each kind once until a handshake succeeds); never blocks."""
        news = []
        while self.socket.poll(0):
            try:
                event = recv_monitor_message(self.socket, zmq.NOBLOCK)["event"]
            except zmq.Again:
                break
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._reported.clear()
                continue
            kind = REFUSED_OUR_KEY if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH else WRONG_SERVER_KEY
            if self.listening and event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                kind = HUNG_UP
            if kind not in self._reported:
                self._reported.add(kind)
                news.append(kind)
        return news

    def close(self) -> None:
        """Stop monitoring (the watched socket stays open)."""
        self.socket.close(linger=0)
