"""The ``/viewer`` page: a lane's raw data and results in neuroglancer, in any browser, updated as they change.

Our page (``viewer/page.html``, ``viewer/viewer.js``) names the lane and the classifier and embeds neuroglancer's
client, served from the installed ``neuroglancer`` package (never a CDN), in a frame. That client is the one the
package drives from Python: it finds its key in a ``/v/KEY/`` path and listens to ``events/KEY``, which here is
an event stream that stays silent (the page sets the state itself). The page polls ``viewer/versions/{lane}``
and points each layer at ``/v/{version}/zarr/...`` when its version changes, so no chunk of an old classifier
or thresholding is shown.
"""

from __future__ import annotations

import asyncio
import html
import importlib.util
import json
import os
import re
import sys
from functools import cache

from aiohttp import web

from backend.checks import decimal
from backend.io.voxel_size import METRES
from backend.service.rendering import raw_display_range
from backend.web.access import token_problem
from backend.web.catalog import SOURCES, Lane, NotFound
from backend.web.routes import SERVICE

PAGE_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "viewer")
PAGE_ASSETS = ("viewer.js", "viewer.css")
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".wasm": "application/wasm", ".html": "text/html",
                 ".map": "application/json"}
CLOSING = web.AppKey("viewer_closing", asyncio.Event)
RAW_RANGES = web.AppKey("viewer_raw_ranges", dict)


def add_viewer_routes(app: web.Application, prefix: str = "") -> None:
    """Register the viewer page and what it loads under ``prefix`` (empty, or ``/t/{token}``)."""
    if CLOSING not in app:
        app[CLOSING] = asyncio.Event()
        app[RAW_RANGES] = {}
        app.on_shutdown.append(_closing)
    app.router.add_get(prefix + "/", to_viewer)
    app.router.add_get(prefix + "/viewer", page)
    app.router.add_get(prefix + "/viewer/assets/{name}", page_asset)
    app.router.add_get(prefix + "/viewer/versions/{lane}", versions)
    app.router.add_get(prefix + "/viewer/ng/v/{lane}/", client_page)
    app.router.add_get(prefix + "/viewer/ng/static/{name}", client_file)
    app.router.add_get(prefix + "/viewer/ng/events/{lane}", client_events)


async def _closing(app: web.Application) -> None:
    app[CLOSING].set()  # open event streams end at once rather than holding the stop for its grace time


@cache
def client_folder() -> str | None:
    """The folder of neuroglancer's built client in the installed package (or the bundle); None without it."""
    spec = importlib.util.find_spec("neuroglancer")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    if hasattr(sys, "_MEIPASS"):  # the bundle carries the client's files without the package's modules
        roots.append(os.path.join(sys._MEIPASS, "neuroglancer"))
    return next((os.path.join(root, "static", "client") for root in roots
                 if os.path.isfile(os.path.join(root, "static", "client", "index.html"))), None)


@cache
def client_files() -> frozenset[str]:
    """The names of the client's files (the only names ``viewer/ng/static/`` answers)."""
    folder = client_folder()
    return frozenset(os.listdir(folder)) if folder is not None else frozenset()


def _require_client() -> str:
    folder = client_folder()
    if folder is None:
        raise NotFound("the viewer page needs neuroglancer's client: install the 'neuroglancer' package")
    return folder


def lane_of(request: web.Request) -> Lane:
    """The lane named by the path's ``{lane}`` or the query's ``lane`` (default 0); NotFound if there is none."""
    lanes = request.app[SERVICE].lanes
    text = request.match_info.get("lane", request.query.get("lane", "0"))
    index = decimal(text, len(lanes) - 1)
    if index is None:
        raise NotFound(f"no lane '{text[:40]}' (the project has lanes 0 to {len(lanes) - 1})")
    return lanes[index]


def source_versions(lane: Lane) -> dict[str, str]:
    """Per source, what its answers come from now (data, classifier, thresholding): its ETag without quotes."""
    view = lane.view()
    return {source: view.etag(source).strip('"') for source in SOURCES}


def dimensions(lane: Lane) -> dict[str, list]:
    """neuroglancer's global dimensions of the lane, x first (shown left to right), time last, as it reads them
    from the OME-Zarr axes: metres where the voxel size is known, unitless voxels otherwise."""
    size = lane.require_gateway().source.voxel_size
    metres = {a: value * METRES[size.unit] for a, value in size.sizes} if size is not None else {}
    axes = lane.layout("raw").axes
    return {a: [metres[a], "m"] if a in metres else [1, ""] for a in "xyzt" if a in axes}


IMAGE_LAYERS = ("raw", "uncertainty")  # neuroglancer's segmentation layers take no channel dimension


def single_channel_axes(lane: Lane) -> dict[str, str]:
    """Per source shown as an image layer whose channel axis holds one channel, its axes in order (the page makes
    that axis a channel dimension, which neuroglancer shows no control for)."""
    layouts = {source: lane.layout(source) for source in IMAGE_LAYERS}
    return {source: layout.axes for source, layout in layouts.items()
            if "c" in layout.axes and layout.shape[layout.axes.index("c")] == 1}


async def _raw_range(request: web.Request, lane: Lane) -> list[float]:
    """The lane's raw display range, read once per served lane (on the pool)."""
    ranges = request.app[RAW_RANGES]
    if lane.index not in ranges:
        low, high = await request.app[SERVICE].run(raw_display_range, lane.require_gateway().source)
        ranges[lane.index] = [low, high]
    return ranges[lane.index]


def _root(request: web.Request) -> str:
    token = request.match_info.get("token")
    return f"/t/{token}/" if token else "/"


async def to_viewer(request: web.Request) -> web.Response:
    """The service's root (``/``, or the ``/t/TOKEN/`` link serve prints) leads a browser to the viewer page."""
    return web.Response(status=302, headers={"Location": f"{_root(request)}viewer?lane=0"})


async def page(request: web.Request) -> web.Response:
    """Our page for lane ``?lane=`` (default 0); a token given by query or header moves into the path, where the
    page's relative links and neuroglancer's requests carry it."""
    service = request.app[SERVICE]
    lane = lane_of(request)
    header = request.headers.get("Authorization", "")
    given = request.query.get("token") or (header[len("Bearer "):].strip() if header.startswith("Bearer ") else "")
    if "token" not in request.match_info and given and token_problem(given) is None:
        return web.Response(status=302, headers={"Location": f"/t/{given}/viewer?lane={lane.index}"})
    _require_client()
    gateway = lane.require_gateway()
    project = os.path.basename(str(service.project.get("project", "")))
    config = {"lane": lane.index, "nickname": lane.nickname, "project": project, "root": _root(request),
              "classes": service.classes, "versions": source_versions(lane),
              "poll_ms": int(service.settings.limits.viewer_poll_s * 1000),
              "classifier": gateway.snapshot.fingerprint, "dimensions": dimensions(lane),
              "shape": dict(zip("tzyx", gateway.source.spatial_shape)), "raw_range": await _raw_range(request, lane),
              "single_channel": single_channel_axes(lane)}
    title = f"{project} · lane {lane.index} ({lane.nickname})"
    body = _template("page.html").format(title=html.escape(title), config=_json_in_html(config))
    return web.Response(text=body, content_type="text/html", headers={"Cache-Control": "no-cache"})


@cache
def _template(name: str) -> str:
    with open(os.path.join(PAGE_FOLDER, name), encoding="utf-8") as file:
        return file.read()


def _json_in_html(value: object) -> str:
    """``value`` as JSON that cannot end the ``<script>`` element it is written into."""
    text = json.dumps(value)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


async def page_asset(request: web.Request) -> web.StreamResponse:
    """Our page's script and style."""
    name = request.match_info["name"]
    if name not in PAGE_ASSETS:
        raise NotFound(f"no file {name[:80]} among the viewer page's assets")
    return _file(os.path.join(PAGE_FOLDER, name))


async def versions(request: web.Request) -> web.Response:
    """The lane's source versions and classifier, which the page polls."""
    lane = lane_of(request)
    return web.json_response({"versions": source_versions(lane), "classifier": lane.view().snapshot.fingerprint},
                             headers={"Cache-Control": "no-store"})


@cache
def _client_page(folder: str) -> str:
    """neuroglancer's ``index.html`` with its scripts and style taken from ``../../static/``."""
    with open(os.path.join(folder, "index.html"), encoding="utf-8") as file:
        text = file.read()
    return re.sub(r'(src|href)="([^"/]+)"', r'\1="../../static/\2"', text)


async def client_page(request: web.Request) -> web.Response:
    """The frame neuroglancer runs in (its state comes in the URL's fragment)."""
    lane_of(request)
    return web.Response(text=_client_page(_require_client()), content_type="text/html",
                        headers={"Cache-Control": "no-cache"})


async def client_file(request: web.Request) -> web.StreamResponse:
    """One file of neuroglancer's client, by its exact name."""
    name = request.match_info["name"]
    if name not in client_files():
        raise NotFound(f"no file {name[:80]} in neuroglancer's client")
    return _file(os.path.join(_require_client(), name))


def _file(path: str) -> web.FileResponse:
    kind = CONTENT_TYPES.get(os.path.splitext(path)[1], "application/octet-stream")
    return web.FileResponse(path, headers={"Content-Type": kind, "Cache-Control": "max-age=3600"})


async def client_events(request: web.Request) -> web.StreamResponse:
    """The event stream neuroglancer's client listens to for state sent from a server: open and silent until the
    page goes away or the service stops."""
    lane_of(request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    await response.prepare(request)
    await response.write(b": the page sets the viewer's state itself\n\n")
    await request.app[CLOSING].wait()
    return response
