"""The app's local worker: one supervised ``ilastik-worker`` process connected to the app's executor.

If the worker process dies (killed, out of memory, crashed), it is started again after a back-off
(``local_workers.restart_first_s`` doubling to ``restart_max_s``), at most ``max_restarts`` times within
``restart_window_s``; the reason is logged. A worker that exits with code 2 (a configuration mistake) is
not restarted. A worker the app has not heard from for ``local_workers.silence_s`` (stopped, frozen, hung;
before its first message: that plus the worker's ``warm_up_limit_s``) is killed with its compute processes,
and restarted the same way. The worker gets the application's configuration through its environment. The worker and its
compute processes watch the app's process and end when it is gone, however it ended.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from backend.backoff import Backoff
from backend.config import Config, environment
from backend.processes import stop_group
from ilastik_desktop.runtime.frozen import worker_command

log = logging.getLogger(__name__)


class LocalWorkers:
    """One ``ilastik-worker`` process with ``processes`` compute processes, restarted when it dies."""

    def __init__(self, endpoint: str, processes: int, folder: str, config: Config = Config(),
                 silence: Callable[[int], float | None] | None = None):
        """``silence(pid)``: seconds since the app last heard from the worker process ``pid`` (None: never);
        without it a frozen worker is not noticed."""
        self.endpoint, self.processes, self.config = endpoint, processes, config.local_workers
        self._silence, self._warm_up_s = silence, config.worker.warm_up_limit_s
        self._killed: str | None = None  # why the supervisor killed the running process
        self.log_path = os.path.join(folder, "local-workers.log")
        self._command = [*worker_command(), "--connect", endpoint, "--processes", str(processes),
                         "--parent-pid", str(os.getpid())]
        self._environment = {**os.environ, **environment(config)}
        self.restarts: list[float] = []  # monotonic times of the restarts within the window
        self._gave_up: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.process = self._start()
        self._thread = threading.Thread(target=self._supervise, name="local-workers", daemon=True)
        self._thread.start()

    def _start(self) -> subprocess.Popen:
        with open(self.log_path, "ab") as log_file:
            self._log_start = log_file.tell()  # this life's output begins here
            return subprocess.Popen(self._command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                    start_new_session=True, env=self._environment)

    def failure(self) -> str | None:
        """Why the worker is no longer running and will not be restarted, if so."""
        return self._gave_up

    def _reason(self, process: subprocess.Popen) -> str:
        code = process.returncode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        how, self._killed = self._killed or how, None
        with open(self.log_path, errors="replace") as f:
            f.seek(self._log_start)  # not an earlier life's; and a statement, not a quoted source line
            tail = [line.strip() for line in f if line.strip() and not line[0].isspace()][-1:]
        return f"the local worker process (pid {process.pid}) {how}: {' '.join(tail) or 'no output'}"

    def _supervise(self) -> None:
        backoff = Backoff(self.config.restart_first_s, self.config.restart_max_s)
        while not self._stop.is_set():
            process, started = self.process, time.monotonic()
            while process.poll() is None:
                if self._stop.wait(0.2):
                    return
                self._kill_if_silent(process, started)
            if self._stop.is_set():
                return
            reason = self._reason(process)
            now = time.monotonic()
            window = self.config.restart_window_s
            self.restarts = [t for t in self.restarts if now - t < window]
            if process.returncode == 2 or len(self.restarts) >= self.config.max_restarts:
                self._gave_up = reason if process.returncode == 2 else \
                    f"{reason} (restarted {len(self.restarts)} times within {window:.0f} s; giving up)"
                log.error("%s", self._gave_up)
                return
            if now - started > window:
                backoff.reset()
            pause = backoff.next()
            log.warning("%s; restarting it in %.1f s", reason, pause)
            if self._stop.wait(pause):
                return
            with self._lock:
                if self._stop.is_set():
                    return
                self.restarts.append(time.monotonic())
                self.process = self._start()

    def _kill_if_silent(self, process: subprocess.Popen, started: float) -> None:
        """Kill ``process`` and its compute processes if the app has not heard from it for too long."""
        if self._silence is None or self._killed is not None:
            return
        silent = self._silence(process.pid)
        limit = self.config.silence_s
        if silent is None:
            silent, limit = time.monotonic() - started, limit + self._warm_up_s  # not registered yet
        if silent <= limit:
            return
        self._killed = f"stopped answering for {silent:.0f} s (stopped, frozen or hung) and was killed"
        try:
            os.killpg(process.pid, signal.SIGKILL)  # a stopped process dies of SIGKILL too
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self) -> None:
        """Stop supervising, then stop the worker and its compute processes."""
        with self._lock:
            self._stop.set()
        self._thread.join(timeout=5)
        stop_group(self.process)
