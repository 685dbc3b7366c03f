"""Waking a poll loop from other threads: a socket pair a ZeroMQ poller can watch."""

from __future__ import annotations

import select
import socket


class Wakeup:
    """``wake()`` from any thread makes the loop's poll return; the loop then calls ``drain()``."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._write.setblocking(False)  # wake() never blocks, so a signal handler may call it

    def fileno(self) -> int:
        """The descriptor to register with the poller."""
        return self._read.fileno()

    def wake(self) -> None:
        """Make the next (or current) poll return."""
        try:
            self._write.send(b"x")
        except OSError:  # closed while stopping, or the buffer is full of wake-ups already
            pass

    def wait(self, timeout: float) -> None:
        """Sleep until woken or ``timeout`` seconds passed, then consume the wake-ups."""
        if select.select([self._read], [], [], timeout)[0]:
            self.drain()

    def drain(self) -> None:
        """Consume pending wake-ups."""
        self._read.recv(65536)

    def close(self) -> None:
        """Close both ends."""
        self._read.close()
        self._write.close()
