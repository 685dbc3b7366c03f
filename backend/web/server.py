"""The web service's lifecycle: an aiohttp server on its own thread and event loop, over given lanes' gateways.

Access rules live here too: a server bound to anything but loopback always has a token (generated if none
was given), checked on every request; CORS answers only the configured origins.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from aiohttp import web

from backend.compute.geometry import Roi
from backend.distributed.executor import ExecutorStatus
from backend.distributed.security import is_local
from backend.errors import UserError
from backend.service.gateway import PREFETCH
from backend.service.gateway_status import GatewayStatus
from backend.web.catalog import Lane, NotFound
from backend.web.chunk_memory import ChunkMemory
from backend.web.metrics import Metrics
from backend.web.roi_query import TooLarge
from backend.web.routes import SERVICE, add_routes, error_body

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebSettings:
    """Where the service listens and who may use it."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # None: none on loopback, generated elsewhere
    cors: tuple[str, ...] = ()  # origins allowed to read from browsers ('*' for any)
    max_roi_mb: float = 1024.0  # largest region the ROI API answers
    threads: int = 8  # for gateway look-ups, raw reads and encoding
    chunk_memory_mb: float = 256.0  # encoded zarr chunks kept in memory for repeated reads


def is_loopback(host: str) -> bool:
    """True if ``host`` is reachable from this machine only (the rule ZeroMQ endpoints follow too)."""
    return is_local(f"tcp://[{host}]:0" if ":" in host else f"tcp://{host}:0")


class Unauthorized(UserError):
    """The token is missing or wrong (HTTP 401)."""


_STATUS = {NotFound: 404, TooLarge: 413, Unauthorized: 401}


class Service:
    """What the handlers share: lanes, classes, settings, the thread pool and the metrics."""

    def __init__(self, lanes: list[Lane], project: dict, settings: WebSettings, version: str):
        self.lanes, self.project, self.settings, self.version = lanes, project, settings, version
        self.classes = project.get("classes", [])
        self.class_colors = [tuple(c["color"]) for c in self.classes]
        self.folder = tempfile.mkdtemp(prefix="ilastik-web-")
        self.pool = ThreadPoolExecutor(settings.threads, thread_name_prefix="web")
        self.metrics = Metrics(self.gateway_statuses)
        self.chunks = ChunkMemory(int(settings.chunk_memory_mb * 2**20))

    async def run(self, function: Callable, *args):
        """Run a blocking call on the pool."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)

    async def fetch(self, lane: Lane, source: str, roi: Roi) -> np.ndarray:
        """``source``'s ``(t, z, y, x, c)`` values over ``roi``, through the gateway."""
        future = await self.run(lane.fetch, source, roi, PREFETCH)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # the client went away
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


def _route_name(request: web.Request) -> str:
    path = request.path
    if "/zarr/" in path:
        return "zarr_metadata" if path.rsplit("/", 1)[-1].startswith(".") else "zarr_chunk"
    for name in ("api/v1/lanes", "api/v1/info", "health", "metrics"):
        if f"/{name}" in path:
            return name.replace("api/v1/", "").replace("lanes", "region")
    return "other"


def _middlewares(service: Service, token: str | None) -> list:
    cors = service.settings.cors

    @web.middleware
    async def handle(request: web.Request, handler):
        started = time.perf_counter()
        origin = request.headers.get("Origin")
        try:
            if request.method == "OPTIONS":
                response = web.Response(status=204)
            else:
                _check_token(request, token)
                response = await handler(request)
        except web.HTTPException as exc:
            response = web.Response(status=exc.status, body=error_body(exc.reason),
                                    content_type="application/json")
        except UserError as exc:
            status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 400)
            response = web.Response(status=status, body=error_body(str(exc)), content_type="application/json")
        except Exception as exc:  # a failed block or a bug: this request fails, the server stays up
            log.warning("%s failed: %s", request.path, exc, exc_info=not isinstance(exc, RuntimeError))
            response = web.Response(status=500, body=error_body(f"{type(exc).__name__}: {exc}"),
                                    content_type="application/json")
        if origin and ("*" in cors or origin in cors) and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = "*" if "*" in cors else origin
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Range, If-None-Match"
            response.headers["Access-Control-Expose-Headers"] = "ETag, Content-Length, X-Axes, X-Shape"
            response.headers["Vary"] = "Origin"
        service.metrics.observe(_route_name(request), time.perf_counter() - started)
        return response

    return [handle]


def _check_token(request: web.Request, token: str | None) -> None:
    if token is None:
        return
    given = request.match_info.get("token") or request.query.get("token")
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        given = header[len("Bearer "):].strip()
    if not given or not secrets.compare_digest(given, token):
        raise Unauthorized("a token is required: send 'Authorization: Bearer TOKEN', ?token=TOKEN or a /t/TOKEN/ "
                           "prefix" if not given else "wrong token")


class WebServer:
    """The HTTP service on its own thread; :meth:`start` returns once it listens, :meth:`stop` joins it."""

    def __init__(self, lanes: list[Lane], project: dict, settings: WebSettings, version: str):
        self.settings = settings
        self.token = settings.token or (None if is_loopback(settings.host) else secrets.token_urlsafe(24))
        self.service = Service(lanes, project, settings, version)
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The base URL clients use."""
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host if host not in ('0.0.0.0', '[::]') else socket.gethostname()}:{self.port}"

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
            self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    async def _listen(self) -> None:
        app = web.Application(middlewares=_middlewares(self.service, self.token), client_max_size=1024)
        app[SERVICE] = self.service
        add_routes(app)
        add_routes(app, "/t/{token}")
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        """Stop answering, end the thread and the pool."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=15)
        self.service.close()
