"""The app's local worker: one supervised ``ilastik-worker`` process connected to the app's executor.

If the worker process dies (killed, out of memory, crashed), it is started again after a back-off
(0.5 s doubling to 8 s), at most ``MAX_RESTARTS`` times a minute; the reason is logged. A worker
that exits with code 2 (a configuration mistake) is not restarted. The worker and its compute
processes watch the app's process and end when it is gone, however it ended.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time

from backend.processes import stop_group
from ilastik_desktop.runtime.frozen import worker_command

log = logging.getLogger(__name__)
MAX_RESTARTS = 5  # within RESTART_WINDOW_S
RESTART_WINDOW_S = 60.0
BACKOFF_MAX_S = 8.0


class LocalWorkers:
    """One ``ilastik-worker`` process with ``processes`` compute processes, restarted when it dies."""

    def __init__(self, endpoint: str, processes: int, folder: str, heartbeat_s: float = 1.0):
        self.endpoint, self.processes = endpoint, processes
        self.log_path = os.path.join(folder, "local-workers.log")
        self._command = [*worker_command(), "--connect", endpoint, "--processes",
                         str(processes), "--heartbeat", str(heartbeat_s), "--parent-pid", str(os.getpid())]
        self.restarts: list[float] = []  # monotonic times of the restarts within the window
        self._gave_up: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.process = self._start()
        self._thread = threading.Thread(target=self._supervise, name="local-workers", daemon=True)
        self._thread.start()

    def _start(self) -> subprocess.Popen:
        with open(self.log_path, "ab") as log_file:
            return subprocess.Popen(self._command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                    start_new_session=True)

    def failure(self) -> str | None:
        """Why the worker is no longer running and will not be restarted, if so."""
        return self._gave_up

    def _reason(self, process: subprocess.Popen) -> str:
        code = process.returncode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        with open(self.log_path, errors="replace") as f:
            tail = [line.strip() for line in f if line.strip()][-1:]
        return f"the local worker process (pid {process.pid}) {how}: {' '.join(tail) or 'no output'}"

    def _supervise(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            process, started = self.process, time.monotonic()
            while process.poll() is None:
                if self._stop.wait(0.2):
                    return
            if self._stop.is_set():
                return
            reason = self._reason(process)
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S]
            if process.returncode == 2 or len(self.restarts) >= MAX_RESTARTS:
                self._gave_up = reason if process.returncode == 2 else \
                    f"{reason} (restarted {len(self.restarts)} times within a minute; giving up)"
                log.error("%s", self._gave_up)
                return
            backoff = 0.5 if now - started > RESTART_WINDOW_S else backoff
            log.warning("%s; restarting it in %.1f s", reason, backoff)
            if self._stop.wait(backoff):
                return
            with self._lock:
                if self._stop.is_set():
                    return
                self.restarts.append(time.monotonic())
                self.process = self._start()
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def stop(self) -> None:
        """Stop supervising, then stop the worker and its compute processes."""
        with self._lock:
            self._stop.set()
        self._thread.join(timeout=5)
        stop_group(self.process)
