"""The web service's lifecycle: an aiohttp server on its own thread and event loop, over given lanes' gateways.

Every request passes :mod:`backend.web.access`'s checks (Host, token) first; every answer to a configured
origin carries CORS headers (set as it is sent, so streamed answers and errors have them too). Connections
are capped and must send their request head in time; the answers being assembled share one memory budget
(:mod:`backend.web.budget`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from aiohttp import web

from backend.compute.geometry import Roi
from backend.config import WebConfig
from backend.distributed.executor import ExecutorStatus
from backend.errors import UserError
from backend.service.gateway import PREFETCH
from backend.service.gateway_status import GatewayStatus
from backend.web.access import (
    ConnectionGuard,
    Forbidden,
    Unauthorized,
    check_host,
    check_token,
    cors_headers,
    host_names,
    is_loopback,
    token_problem,
    unauthorized_page_for_browsers,
)
from backend.web.budget import Budget, Busy
from backend.web.catalog import Lane, LaneView, NotFound
from backend.web.chunk_memory import ChunkMemory
from backend.web.metrics import Metrics
from backend.web.roi_query import TooLarge
from backend.web.routes import SERVICE, add_routes, error_body
from backend.web.viewer_page import add_viewer_routes

log = logging.getLogger(__name__)


MAX_ROI_MB = 1e6  # limits of the settings' sizes (MB)
MAX_CHUNK_MEMORY_MB = 1e5


@dataclass(frozen=True)
class WebSettings:
    """Where the service listens and who may use it."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # None: a new one is generated
    no_token: bool = False  # no token at all (loopback only)
    cors: tuple[str, ...] = ()  # origins allowed to read from browsers ('*' for any)
    max_roi_mb: float = 1024.0  # largest region the ROI API answers
    threads: int = 8  # for gateway look-ups, raw reads and encoding
    chunk_memory_mb: float = 256.0  # encoded zarr chunks kept in memory for repeated reads
    limits: WebConfig = field(default_factory=WebConfig)  # timeouts, connections, memory budget

    def check(self) -> None:
        """UserError (one line naming the option) for a value the service cannot use."""
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port {self.port}: expected 0 to 65535")
        for name, value, low, high in (("--max-roi-mb", self.max_roi_mb, 0, MAX_ROI_MB),
                                       ("--chunk-memory-mb", self.chunk_memory_mb, 0, MAX_CHUNK_MEMORY_MB)):
            if not (math.isfinite(value) and low <= value <= high) or (name == "--max-roi-mb" and value == 0):
                lowest = "more than 0" if name == "--max-roi-mb" else "0"
                raise UserError(f"{name} {value}: expected a number of MB from {lowest} to {high:g}")
        if self.token is not None and token_problem(self.token):
            raise UserError(f"--{token_problem(self.token)}")
        if self.no_token and self.token is not None:
            raise UserError("--no-token and --token exclude each other")
        if self.no_token and not is_loopback(self.host):
            raise UserError(f"--no-token: only on a loopback address (127.0.0.1, ::1), not on {self.host}")


_STATUS = {NotFound: 404, TooLarge: 413, Unauthorized: 401, Forbidden: 403, Busy: 503}


class Service:
    """What the handlers share: lanes, classes, settings, the thread pool and the metrics."""

    def __init__(self, lanes: list[Lane], project: dict, settings: WebSettings, version: str):
        self.lanes, self.project, self.settings, self.version = lanes, project, settings, version
        self.classes = project.get("classes", [])
        self.class_colors = [tuple(c["color"]) for c in self.classes]
        self.folder = tempfile.mkdtemp(prefix="ilastik-web-")
        self.pool = ThreadPoolExecutor(settings.threads, thread_name_prefix="web")
        self.budget = Budget(int(settings.limits.memory_budget_mb * 1e6), settings.limits.budget_wait_s)
        self.metrics = Metrics(self.gateway_statuses, self.budget)
        self.chunks = ChunkMemory(int(settings.chunk_memory_mb * 2**20))

    async def run(self, function: Callable, *args):
        """Run a blocking call on the pool."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)

    async def fetch(self, lane: Lane, source: str, roi: Roi, view: LaneView) -> np.ndarray:
        """``source``'s ``(t, z, y, x, c)`` values over ``roi`` under ``view``, through the gateway; if the
        caller is cancelled (the client went away), the region is cancelled: its blocks and its buffer."""
        started = asyncio.ensure_future(self.run(lane.fetch, source, roi, PREFETCH, view))
        try:
            part = await asyncio.shield(started)
        except asyncio.CancelledError:
            started.add_done_callback(_cancel_started)
            raise
        try:
            return await asyncio.wrap_future(part.future)
        except asyncio.CancelledError:
            part.cancel()
            raise

    def gateway_statuses(self) -> list[GatewayStatus]:
        """Status of every lane's gateway."""
        return [lane.gateway.status() for lane in self.lanes if lane.gateway is not None]

    def executor_status(self) -> ExecutorStatus | None:
        """The executor's status (shared by all lanes), or None without any lane."""
        gateway = next((lane.gateway for lane in self.lanes if lane.gateway is not None), None)
        return gateway.executor.status() if gateway is not None else None

    def describe(self) -> dict:
        """``/api/v1/info``."""
        return {**self.project, "version": self.version, "lanes": [lane.describe() for lane in self.lanes]}

    def close(self) -> None:
        """Stop the pool and remove temporary files."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def _cancel_started(started: asyncio.Future) -> None:
    """Cancel a region whose request started after its client went away."""
    if not started.cancelled() and started.exception() is None:
        started.result().cancel()


def _route_name(request: web.Request) -> str:
    path = request.path
    if "/zarr/" in path:
        return "zarr_metadata" if path.rsplit("/", 1)[-1].startswith(".") else "zarr_chunk"
    if "/zarr3/" in path:
        return "zarr_metadata" if path.endswith("/zarr.json") else "zarr_chunk"
    for name in ("api/v1/lanes", "api/v1/info", "health", "metrics"):
        if f"/{name}" in path:
            return name.replace("api/v1/", "").replace("lanes", "region")
    return "other"


def _middlewares(service: Service, token: str | None, hosts: Callable[[str], bool] | None,
                 guard: Callable[[], ConnectionGuard | None]) -> list:
    @web.middleware
    async def handle(request: web.Request, handler):
        started = time.perf_counter()
        connections = guard()
        if connections is not None:
            connections.serving(request.protocol, +1)
        try:
            check_host(request, hosts)
            if request.method == "OPTIONS":
                response = web.Response(status=204)
            else:
                check_token(request, token)
                response = await handler(request)
        except web.HTTPException as exc:
            response = web.Response(status=exc.status, body=error_body(exc.reason),
                                    content_type="application/json")
        except UserError as exc:
            status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 400)
            response = web.Response(status=status, body=error_body(str(exc)), content_type="application/json")
            if status == 503:
                response.headers["Retry-After"] = "5"
        except Exception as exc:  # a failed block or a bug: this request fails, the server stays up
            log.warning("%s failed: %s", request.path, exc, exc_info=not isinstance(exc, RuntimeError))
            response = web.Response(status=500, body=error_body(f"{type(exc).__name__}: {exc}"),
                                    content_type="application/json")
        finally:
            if connections is not None:
                connections.serving(request.protocol, -1)
        service.metrics.observe(_route_name(request), time.perf_counter() - started)
        return response

    return [handle]


def _cors_on_every_answer(allowed: tuple[str, ...]) -> Callable:
    """An ``on_response_prepare`` hook adding the CORS headers to every answer as its head is sent."""

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(cors_headers(request.headers.get("Origin"), allowed))

    return add


class WebServer:
    """The HTTP service on its own thread; :meth:`start` returns once it listens, :meth:`stop` joins it."""

    def __init__(self, lanes: list[Lane], project: dict, settings: WebSettings, version: str):
        settings.check()
        self.settings = settings
        self.token = None if settings.no_token else settings.token or secrets.token_urlsafe(24)
        self.service = Service(lanes, project, settings, version)
        self.port: int | None = None
        self.guard: ConnectionGuard | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The base URL clients use (without the token)."""
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host if host not in ('0.0.0.0', '[::]') else socket.gethostname()}:{self.port}"

    @property
    def link(self) -> str:
        """The base URL with the token in its path, as the user is shown it."""
        return self.url + (f"/t/{self.token}" if self.token else "")

    def start(self, timeout: float = 30) -> WebServer:
        """Start listening; UserError if the address cannot be used."""
        self._thread = threading.Thread(target=self._run, name="web-server", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise UserError(f"the web server did not start within {timeout:.0f} s")
        if self._error is not None:
            self._thread.join(timeout=5)
            self.service.close()
            raise UserError(f"cannot serve at {self.settings.host}:{self.settings.port}: {self._error}")
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._listen())
        except OSError as exc:
            self._error = exc
            if self._runner is not None:
                self._loop.run_until_complete(self._runner.cleanup())
        self._started.set()
        if self._error is None:
            self._loop.run_forever()
            self._loop.run_until_complete(self._close())
        self._loop.close()

    async def _listen(self) -> None:
        limits = self.settings.limits
        middlewares = _middlewares(self.service, self.token, host_names(self.settings.host), lambda: self.guard)
        app = web.Application(middlewares=[unauthorized_page_for_browsers, *middlewares], client_max_size=1024)
        app[SERVICE] = self.service
        app.on_response_prepare.append(_cors_on_every_answer(self.settings.cors))
        for prefix in ("", "/t/{token}"):
            add_routes(app, prefix)
            add_routes(app, prefix + "/v/{version}")  # the viewer page's layers: the version only busts caches
            add_viewer_routes(app, prefix)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True,
                                     shutdown_timeout=limits.stop_grace_s, keepalive_timeout=limits.header_timeout_s)
        await self._runner.setup()
        self.guard = ConnectionGuard(self._runner.server, int(limits.max_connections),
                                     self.service.metrics.connection_dropped)
        self.service.metrics.watch_connections(self.guard.open)
        self._listener = await asyncio.get_running_loop().create_server(
            self.guard, self.settings.host, self.settings.port, reuse_address=True)
        self.port = self._listener.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        self._listener.close()
        await self._runner.cleanup()  # requests in progress get stop_grace_s, then are cancelled

    def stop(self) -> None:
        """Stop answering, end the thread and the pool."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=15)
        self.service.close()
