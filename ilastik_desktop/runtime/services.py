"""The application's compute services: the cache server, the ZeroMQ executor and local workers.

They are started together, handed to gateways, and stopped together; nothing is left running.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from urllib.parse import urlsplit

import redis

from backend.cache.block_cache import BlockCache
from backend.cache.redis_server import EmbeddedRedis, RedisSettings
from backend.cache.signing import signing_key
from backend.compute.kernel_cache import kernels_compiled
from backend.compute.pipeline import Pipeline
from backend.distributed.dask_clusters import local_worker_count, start_dask
from backend.distributed.executor import Executor, WorkerStatus, default_workers
from backend.distributed.security import CurveIdentity, KeyStore
from backend.distributed.zmq_executor import ZmqExecutor
from backend.errors import UserError
from backend.io.sources import DataSource
from backend.owned_folder import OwnedFolder, socket_folder_parent
from backend.service.gateway import Gateway, GatewayConfig
from ilastik_desktop.runtime.local_workers import LocalWorkers
from ilastik_desktop.runtime.settings import ComputeSettings


def _probe(endpoint: str) -> None:
    """UserError if nothing accepts TCP connections at ``endpoint``."""
    parts = urlsplit(endpoint)
    if parts.scheme != "tcp":
        return
    try:
        port = parts.port
        socket.create_connection((parts.hostname, port), timeout=3).close()
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{endpoint} is unreachable ({getattr(exc, 'strerror', None) or exc})") from None


def machine_name() -> str:
    """The name (else the address) other machines know this one by; never a loopback name."""
    for name in (socket.getfqdn(), socket.gethostname()):
        if name and not name.startswith("localhost") and not _is_loopback(name):
            return name
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            return probe.getsockname()[0]
    except OSError:
        return socket.gethostname()


def _is_loopback(name: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(name, None))
    except (OSError, ValueError):
        return False


RUN_FOLDER_PREFIX = "ilastik-desktop-run-"
WORKERS_SOCKET = "workers"


class Services:
    """Cache, executor and workers of one application run; use as a context manager."""

    def __init__(self, settings: ComputeSettings):
        self.settings = settings
        self.config = settings.config
        # the local workers' socket lives in it; making it also removes the folders of killed runs
        self._folder = OwnedFolder(RUN_FOLDER_PREFIX, socket_folder_parent(RUN_FOLDER_PREFIX, WORKERS_SOCKET))
        self.folder = self._folder.path
        self.embedded: EmbeddedRedis | None = None
        self.executor: Executor | None = None
        self.local: LocalWorkers | None = None
        self.compiling_kernels = False  # no compiled kernel fitted when the local workers started (a first start)
        self.listen_address: str | None = None
        self._restart_lock = threading.Lock()
        try:
            self.cache = BlockCache(self._cache_client(), self.config.cache, signing_key(settings.config_dir))
            self.identity = self._identity()
            if settings.dask is not None:
                self.executor = start_dask(settings.dask, self.config)
                return
            local = "ipc://" + os.path.join(self.folder, WORKERS_SOCKET) if os.name == "posix" else "tcp://127.0.0.1:0"
            self.executor = ZmqExecutor(bind=local, identity=self.identity, config=self.config.executor,
                                        fail_without_workers=settings.fail_without_workers)
            if settings.listen:
                self.listen_address = self._endpoint(lambda: self.executor.listen(settings.listen), settings.listen)
            for endpoint, key in settings.connect:
                self._endpoint(lambda e=endpoint, k=key: self.executor.connect(e, k), endpoint)
            workers = default_workers() if settings.workers is None else settings.workers
            if workers:
                self.local = LocalWorkers(self.executor.address, workers, self.folder, self.config,
                                          silence=self.executor.silence)
                self.compiling_kernels = not kernels_compiled()  # the local workers compile them as they start
        except BaseException:
            self.close()
            raise

    def _cache_client(self) -> redis.Redis:
        timeout = self.config.cache.socket_timeout_s
        if self.settings.redis_url:
            try:
                client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=timeout,
                                              socket_connect_timeout=timeout)
                client.ping()
            except (redis.RedisError, ValueError) as exc:
                raise UserError(f"cannot use the Redis server at {self.settings.redis_url}: {exc}") from None
            return client
        self.embedded = EmbeddedRedis(RedisSettings(maxmemory_mb=self.settings.cache_mb), self.config.cache).start()
        return self.embedded.client(socket_timeout=timeout, socket_connect_timeout=timeout)

    def _identity(self) -> CurveIdentity | None:
        remote_keys = [key for _, key in self.settings.connect if key is not None]
        if not (self.settings.listen or remote_keys or self.settings.enable_remote):
            return None
        store = KeyStore(self.settings.config_dir)
        public, secret = store.keypair("gateway")
        return CurveIdentity(public, secret, set(self.settings.worker_keys) | store.authorized("worker"))

    @staticmethod
    def _endpoint(action, endpoint: str):
        try:
            return action()
        except Exception as exc:  # zmq raises ZMQError for bad, busy or unknown endpoints
            raise UserError(f"cannot use {endpoint}: {exc}") from None

    def wait_for_workers(self, timeout: float | None = None) -> None:
        """Wait until the local workers (or, without them, any worker) registered; UserError if none did."""
        wanted = self.local.processes if self.local else self._dask_processes()
        timeout = self.config.executor.worker_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:  # in short waits, so that a local worker that died and will never register is noticed
            if self.executor.wait_for_workers(wanted, timeout=min(0.25, max(0.0, deadline - time.monotonic()))):
                return
            if self.local and self.local.failure():
                raise UserError(self.local.failure())
            if time.monotonic() >= deadline:
                raise UserError(self._no_workers(timeout))

    def _dask_processes(self) -> int:
        """How many worker processes a Dask engine should have before we start (1 unless local:N)."""
        address = self.settings.dask.address if self.settings.dask else None
        if address and address.startswith("local"):
            return local_worker_count(address) or default_workers()
        return 1

    def _no_workers(self, timeout: float) -> str:
        """Why no worker registered, pointing at what the user can check."""
        if self.settings.dask is not None:
            return (f"no Dask worker joined {self.settings.dask.describe()} within {timeout:.0f} s (batch jobs may "
                    "still be queued: see --worker-timeout)")
        if self.local:
            return f"no local workers registered within {timeout:.0f} s (log: {self.local.log_path})"
        refused = list(dict.fromkeys(self.executor.status().refused))[-3:]
        if refused:
            return (f"no worker registered within {timeout:.0f} s; refused the unknown worker key(s) "
                    f"{', '.join(refused)}: allow a worker with --worker-key KEY")
        hints = [f"no worker answered at {endpoint} (is 'ilastik-worker --listen' running there"
                 + (", and is the key after the comma its key, see ilastik-worker --print-key?)" if key else "?)")
                 for endpoint, key in self.settings.connect]
        if self.listen_address:
            hints.append(f"no worker connected to {self.listen_address} (start one with: {self.worker_command()})")
        return f"no worker registered within {timeout:.0f} s: {'; '.join(hints)}"

    # -- changing the workers while running ------------------------------------------------------------
    def set_local_workers(self, processes: int) -> None:
        """Run ``processes`` local compute processes (0 = none); their unfinished blocks go to the others."""
        if self.local is not None:
            self.local.stop()
            self.local = None
        if processes > 0:
            self.local = LocalWorkers(self.executor.address, processes, self.folder, self.config,
                                      silence=self.executor.silence)

    def add_remote_worker(self, endpoint: str, key: bytes | None, timeout: float = 8.0) -> WorkerStatus:
        """Connect to a listening worker and wait until it registers; UserError says why it did not."""
        _probe(endpoint)
        refused = len(self.executor.status().refused)
        self._endpoint(lambda: self.executor.connect(endpoint, key), endpoint)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.executor.status()
            found = [w for w in status.workers if w.endpoint == endpoint]
            if found:
                return found[0]
            news = status.refused[refused:]
            keys = [r for r in news if r.startswith(f"{endpoint}:") and ("our key" in r or "handshake" in r)]
            if keys:
                self.executor.disconnect(endpoint)
                raise UserError(keys[0])
            mismatch = [r for r in news if "protocol version" in r]
            if mismatch:
                self.executor.disconnect(endpoint)
                raise UserError(f"{endpoint}: version mismatch, {mismatch[0]}; install the same ilastik-desktop "
                                "version on both machines")
            busy = [r for r in news if r.startswith(f"{endpoint}: busy")]
            if busy:
                self.executor.disconnect(endpoint)
                raise UserError(f"{busy[0]}; stop that gateway first or start another worker")
            self.executor.wait_for_change(min(0.25, max(0.0, deadline - time.monotonic())))
        self.executor.disconnect(endpoint)
        ours = self.identity.public.decode() if self.identity else "(none)"
        raise UserError(f"{endpoint} answers but did not accept us within {timeout:.0f} s: check the worker's key "
                        f"(ilastik-worker --print-key) and that it was started with --gateway-key '{ours}'")

    def remove_remote_worker(self, endpoint: str) -> None:
        """Stop using a worker added with :meth:`add_remote_worker`."""
        self.executor.disconnect(endpoint)

    def accept_workers(self, endpoint: str = "tcp://*:0") -> str:
        """Listen for remote workers (CurveZMQ); returns the address they should connect to."""
        if self.listen_address is None:
            self.listen_address = self._endpoint(lambda: self.executor.listen(endpoint), endpoint)
        return self.listen_address

    def allow_worker(self, key: bytes) -> None:
        """Accept remote workers with this public key from now on, and in later runs (authorized_workers)."""
        self.identity.allow(key)
        KeyStore(self.settings.config_dir).add_authorized("worker", key)

    def worker_command(self) -> str:
        """The command to run on a remote machine so its worker connects to us."""
        host, port = self.accept_workers().removeprefix("tcp://").rsplit(":", 1)
        if host in ("0.0.0.0", "*", "[::]", "::"):
            host = machine_name()  # bound to every interface
        return (f"ilastik-worker --connect tcp://{host}:{port} "
                f"--gateway-key '{self.identity.public.decode()}'")

    def accepting_line(self) -> str:
        """What a run that accepts workers prints: where, the command that starts one, and (when no worker key is
        allowed yet) how to allow its key."""
        allow = "" if self.identity.allowed else (" and allow its key here with --worker-key KEY (ilastik-worker "
                                                  "--print-key prints it)")
        return f"accepting workers at {self.listen_address}; start them with: {self.worker_command()}{allow}"

    def gateway(self, source: DataSource, pipeline: Pipeline, block_shape: tuple[int, int, int, int]) -> Gateway:
        """A gateway for one image on these services (close it before the services)."""
        by_path = self.settings.dask is not None and self.settings.dask.shared_filesystem
        return Gateway(source, pipeline, self.executor, self.cache,
                       GatewayConfig(block_shape=block_shape, raw_by_path=by_path), on_cache_lost=self._restart_cache)

    def _restart_cache(self) -> None:
        if self.embedded is None:
            return
        with self._restart_lock:
            try:
                self.embedded.ensure_running()
            except UserError:
                pass  # the gateway reports the cache as unavailable; the next loss tries again

    def close(self) -> None:
        """Stop workers, executor and cache server; remove temporary files."""
        if getattr(self, "cache", None) is not None:
            self.cache.stop_retrying()  # shutting down: never wait for a cache server that is gone
        if self.executor is not None:
            self.executor.close()
        if self.local is not None:
            self.local.stop()
        if self.embedded is not None:
            self.embedded.stop()
        self._folder.remove()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
