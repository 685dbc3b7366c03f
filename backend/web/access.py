"""Who may use the web service: its token, the names it answers to, and how many connections it holds.

Browsers read from the origins the server is told (``--cors``): every answer to them, errors and preflights
included, carries the CORS headers a zarr client needs (ranges, lengths, ETags).

Every server has a token unless it is bound to loopback and told to run without one (as Jupyter does);
the token is compared as bytes in constant time. A server bound to loopback answers only requests whose
``Host`` is a loopback name or address, so a web page the user visits cannot reach it through a DNS name
that points at 127.0.0.1 (DNS rebinding). Connections are capped: beyond the cap the oldest connection not
in a request (idle, or still sending its request head) is dropped, or the new one refused when all are busy.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import ipaddress
import json
import re
from collections.abc import Callable

from aiohttp import web

from backend.distributed.security import is_local
from backend.errors import UserError

TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~-]{8,256}")
LOOPBACK_NAMES = ("localhost",)


class Unauthorized(UserError):
    """The token is missing or wrong (HTTP 401)."""


class Forbidden(UserError):
    """A request for a name this server does not answer to (HTTP 403)."""


def is_loopback(host: str) -> bool:
    """True if ``host`` is reachable from this machine only (the rule ZeroMQ endpoints follow too)."""
    return is_local(f"tcp://[{host}]:0" if ":" in host else f"tcp://{host}:0")


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be used (it goes into URLs: 8 to 256 ASCII letters, digits, '.', '_', '~', '-'),
    or None if it can."""
    if TOKEN_PATTERN.fullmatch(token) is None:
        return (f"token '{token[:40]}': expected 8 to 256 characters, each an ASCII letter, digit, '.', '_', '~' "
                "or '-'")
    return None


def check_token(request: web.Request, token: str | None) -> None:
    """Unauthorized unless ``request`` carries ``token`` (header, query or ``/t/TOKEN/`` path); None: no token."""
    if token is None:
        return
    prefix = request.path.split("/", 3)[2] if request.path.startswith("/t/") else None  # also where no route is
    given = request.match_info.get("token") or prefix or request.query.get("token")
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        given = header[len("Bearer "):].strip()
    if not given:
        raise Unauthorized("a token is required: send 'Authorization: Bearer TOKEN', ?token=TOKEN or a /t/TOKEN/ "
                           "prefix")
    if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("ascii")):
        raise Unauthorized("wrong token")


UNAUTHORIZED_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>token needed - ilastik-desktop</title></head>
<body style="font: 15px sans-serif; margin: 2em">
<h1>This link needs its token</h1>
<p>{reason}.</p>
<p>Open the link as <code>ilastik-desktop serve</code> prints it or as File &gt; Serve over HTTP shows it in the
window: it carries the token, as in <code>http://HOST:PORT/t/TOKEN{path}</code>.</p>
</body></html>
"""


@web.middleware
async def unauthorized_page_for_browsers(request: web.Request, handler) -> web.StreamResponse:
    """A browser's (a request accepting text/html) 401 as a short HTML page saying the link needs its token;
    other clients keep the JSON error."""
    response = await handler(request)
    if response.status != 401 or "text/html" not in request.headers.get("Accept", ""):
        return response
    try:
        reason = json.loads(response.body)["error"]
    except (TypeError, ValueError, KeyError):
        reason = "a token is required"
    page = UNAUTHORIZED_PAGE.format(reason=html.escape(reason), path=html.escape(request.path))
    return web.Response(status=401, text=page, content_type="text/html", headers={"Cache-Control": "no-store"})


def host_names(bound: str) -> Callable[[str], bool] | None:
    """Which ``Host`` names a server bound to ``bound`` accepts: loopback names and addresses for a loopback
    bind, None (any; the token guards it) otherwise."""
    if not is_loopback(bound):
        return None
    own = bound.strip("[]").lower()

    def accepted(name: str) -> bool:
        if name in LOOPBACK_NAMES or name == own:
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    return accepted


def check_host(request: web.Request, accepted: Callable[[str], bool] | None) -> None:
    """Forbidden if the request's ``Host`` header names something ``accepted`` refuses."""
    header = request.headers.get("Host")
    if accepted is None or header is None:
        return
    name = header.strip().lower()
    if name.startswith("["):
        name = name[1:name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.split(":")[0]
    if not accepted(name.rstrip(".")):
        raise Forbidden(f"this server answers to loopback names only, not '{header[:80]}'")


CORS_METHODS = "GET, HEAD, OPTIONS"
CORS_REQUEST_HEADERS = "Authorization, Range, If-None-Match, If-Range"
CORS_EXPOSED = "ETag, Content-Length, Content-Range, Accept-Ranges, X-Axes, X-Shape"
CORS_MAX_AGE_S = "600"  # how long a browser may reuse a preflight's answer


def cors_headers(origin: str | None, allowed: tuple[str, ...]) -> dict[str, str]:
    """The CORS headers of any answer to a request from ``origin`` (none for an origin not ``allowed``;
    ``allowed`` may hold '*' for any)."""
    if not origin or not ("*" in allowed or origin in allowed):
        return {}
    return {"Access-Control-Allow-Origin": "*" if "*" in allowed else origin,
            "Access-Control-Allow-Methods": CORS_METHODS, "Access-Control-Allow-Headers": CORS_REQUEST_HEADERS,
            "Access-Control-Expose-Headers": CORS_EXPOSED, "Access-Control-Max-Age": CORS_MAX_AGE_S,
            "Vary": "Origin"}


class _Refused(asyncio.Protocol):
    """A connection beyond the cap while every other is in a request: told 503 and closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
                        b"Connection: close\r\n\r\n")
        transport.close()


class _Counted(asyncio.Protocol):
    """aiohttp's handler of one connection, with the guard told when the connection ends."""

    def __init__(self, guard: ConnectionGuard, handler: asyncio.Protocol):
        self.guard, self.handler = guard, handler

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.handler.connection_made(transport)
        if self.guard.handlers.get(self.handler):  # dropped before it was even made
            self.handler.force_close()

    def data_received(self, data: bytes) -> None:
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.handlers.pop(self.handler, None)
        self.handler.connection_lost(exc)


class ConnectionGuard:
    """The listening socket's protocol factory: aiohttp's handlers, at most ``limit`` of them open.

    The middleware marks the handlers serving a request (:meth:`serving`); at the cap the oldest handler not
    marked is closed to make room, and with all marked the new connection is refused. ``count(reason)`` is
    called for each ("dropped" or "refused").
    """

    def __init__(self, server: web.Server, limit: int, count: Callable[[str], None]):
        self.server, self.limit, self.count = server, limit, count
        self.handlers: dict[object, bool] = {}  # open connections' handlers, oldest first: True once dropped
        self.busy: dict[object, int] = {}

    def open(self) -> int:
        """Connections open (not being dropped)."""
        return sum(1 for dropped in self.handlers.values() if not dropped)

    def serving(self, handler: object, delta: int) -> None:
        """``handler`` starts (+1) or ends (-1) a request."""
        left = self.busy.get(handler, 0) + delta
        if left > 0:
            self.busy[handler] = left
        else:
            self.busy.pop(handler, None)

    def __call__(self) -> asyncio.BaseProtocol:
        if self.open() >= self.limit:
            idle = next((h for h, dropped in self.handlers.items() if not dropped and h not in self.busy), None)
            if idle is None:
                self.count("refused")
                return _Refused()
            self.handlers[idle] = True
            idle.force_close()
            self.count("dropped")
        handler = self.server()
        self.handlers[handler] = False
        return _Counted(self, handler)
