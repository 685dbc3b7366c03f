"""A real ``ilastik-desktop serve`` process on a free loopback port, for the web service's tests and benchmark."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request

from tests.helpers import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def http_get(url: str, headers: dict | None = None, timeout: float = 120) -> tuple[int, bytes, dict]:
    """Status, body and headers of ``GET url`` (HTTP errors included)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


class ServeProcess:
    """``ilastik-desktop serve ARGS --port 0`` (with ``env`` added to the environment, and at most ``max_files``
    open files if given); its URL is read from what it prints. Use as a context manager.

    ``url`` is the link it prints (with the token in its path, if any); ``base`` the address without it.
    """

    def __init__(self, *args: str, timeout: float = 120, env: dict | None = None, max_files: int | None = None):
        env = dict(os.environ, **(env or {}), PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        limit = None if max_files is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                                          (max_files, max_files))
        self.process = subprocess.Popen([sys.executable, "-m", "ilastik_desktop", "serve", *args, "--port", "0"],
                                        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                                        start_new_session=True, preexec_fn=limit)
        self.lines: list[str] = []
        self.url: str | None = None
        self.base: str | None = None
        self.token: str | None = None
        self.left_running = False
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout) or self.url is None:
            self.stop()
            raise RuntimeError("serve did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)
            found = re.match(r"serving at (http://\S+?)/? ", line)
            if found:
                self.url = found.group(1)
                self.base = self.url.split("/t/")[0]
            token = re.match(r"token: (\S+)", line)
            if token:
                self.token = token.group(1)
            if line.startswith("zarr: "):
                self._ready.set()
        self._ready.set()

    def get(self, path: str, headers: dict | None = None, timeout: float = 120) -> tuple[int, bytes, dict]:
        """Status, body and headers of ``GET path`` (errors included)."""
        return http_get(self.url + path, headers, timeout)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 20 s; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        try:  # its workers and redis-server are in its process group: wait until the group is gone
            wait_for(self._group_gone, 10, interval=0.1, message="processes of the server's group still run")
            self.left_running = False
        except AssertionError:
            self.left_running = True
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.returncode

    def _group_gone(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
            return False
        except ProcessLookupError:
            return True

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
