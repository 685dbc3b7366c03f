"""Start real ``ilastik-worker`` processes for tests and always clean them up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import psutil

from tests.conftest import REPO
from tests.helpers import wait_for


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compute_processes(parent: psutil.Process) -> list[psutil.Process]:
    """The compute processes ``parent``'s pool started: not its resource tracker, not a short-lived child
    such as the ``uname -p`` a library runs at import, and not a child forked but not yet running Python."""
    found = []
    for child in parent.children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass  # gone meanwhile
    return found


def start_worker(*args: str, processes: int = 1, heartbeat: float = 0.2) -> subprocess.Popen:
    """An ilastik-worker subprocess in its own process group (so its pool dies with it), ending by itself when
    the test run does (a test run killed midway left its workers waiting for their gateway for good)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "ilastik_desktop.cli.worker", "--parent-pid", str(os.getpid()), *args,
           "--processes", str(processes), "--heartbeat", str(heartbeat)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stderr=subprocess.PIPE, text=True)


def wait_listening(endpoint: str, timeout: float = 60.0) -> None:
    """Wait until a worker started with ``--listen tcp://host:port`` accepts TCP connections."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)

    def accepts() -> bool:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True

    wait_for(accepts, timeout, interval=0.1, message=f"nothing listens on {endpoint}", ignore=(OSError,))


def kill_worker(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Kill a worker and everything it started."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


class ZmqWithWorkers:
    """A ZmqExecutor with real worker processes connected to it, closed together."""

    def __init__(self, pipeline, workers: int = 1, processes: int = 1, **config_changes):
        from backend.config import ExecutorConfig
        from backend.distributed.zmq_executor import ZmqExecutor

        self.executor = ZmqExecutor(config=ExecutorConfig(**{"heartbeat_s": 0.2, "liveness": 3, **config_changes}))
        self.executor.add_pipeline(pipeline)
        self.procs = [start_worker("--connect", self.executor.address, processes=processes) for _ in range(workers)]
        if not self.executor.wait_for_workers(workers * processes, timeout=60):
            self.close()
            raise RuntimeError("workers did not register")

    def __getattr__(self, name):
        return getattr(self.executor, name)

    def close(self) -> None:
        self.executor.close()
        for proc in self.procs:
            kill_worker(proc, signal.SIGTERM)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
