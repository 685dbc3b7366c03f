"""The web service's endpoints: health, info, ROI regions, zarr documents and chunks, metrics, docs.

Handlers never block the event loop: gateway requests (cache look-ups, raw reads) and encoding run on the
service's thread pool, results are awaited as futures.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile

from aiohttp import web

from backend.checks import decimal
from backend.compute.threshold import settings_fingerprint
from backend.io.writers import BlockWriter
from backend.web import zarr_layout
from backend.web.catalog import Lane, NotFound, check_source
from backend.web.openapi import describe, docs_asset, docs_page
from backend.web.roi_query import FORMATS, RoiQuery, npy_header, parse_query, png_bytes, slabs

SERVICE = web.AppKey("service", object)


def add_routes(app: web.Application, prefix: str = "") -> None:
    """Register every endpoint under ``prefix`` (empty, or ``/t/{token}`` for token-in-path clients)."""
    app.router.add_get(prefix + "/health", health)
    app.router.add_get(prefix + "/api/v1/info", info)
    app.router.add_get(prefix + "/api/v1/lanes/{lane}/{source}", region)
    app.router.add_get(prefix + "/zarr/{lane}/{source}/{path:.*}", zarr_document)
    app.router.add_get(prefix + "/metrics", metrics)
    app.router.add_get(prefix + "/openapi.json", openapi)
    app.router.add_get(prefix + "/doc", docs)
    app.router.add_get(prefix + "/docs", docs)
    app.router.add_get(prefix + "/doc/static/{name}", docs_static)


async def health(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    status = await service.run(service.executor_status)
    return web.json_response({"status": "ok", "lanes": len(service.lanes),
                              "worker_processes": status.processes if status is not None else 0})


async def info(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return web.json_response(await service.run(service.describe))


def _lane(request: web.Request) -> Lane:
    service = request.app[SERVICE]
    text = request.match_info["lane"]
    index = decimal(text, len(service.lanes) - 1)
    if index is None:
        raise NotFound(f"no lane '{text[:40]}' (the project has lanes 0 to {len(service.lanes) - 1})")
    return service.lanes[index]


def _etag(lane: Lane, source: str) -> str:
    gateway = lane.require_gateway()
    classifier = "" if source == "raw" else f"-{gateway.pipeline_fingerprint}"
    threshold = f"-{settings_fingerprint(lane.threshold)}" if source == "objects" else ""
    return f'"{gateway.data_fingerprint}{classifier}{threshold}"'


def _not_modified(request: web.Request, etag: str) -> bool:
    return etag in [tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")]


async def zarr_document(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    lane, source = _lane(request), request.match_info["source"].removesuffix(".zarr")  # napari wants *.zarr
    check_source(source)
    path = request.match_info["path"].strip("/")
    etag = _etag(lane, source)
    if _not_modified(request, etag):
        return web.Response(status=304, headers={"ETag": etag})
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    documents = {".zgroup": zarr_layout.zgroup,
                 ".zattrs": lambda: zarr_layout.zattrs(lane, source, service.classes)}
    if path in documents:
        return web.json_response(documents[path](), headers=headers)
    level, _, rest = path.partition("/")
    zarr_layout.check_level(level)
    layout = lane.layout(source)
    if rest == ".zarray":
        return web.json_response(zarr_layout.zarray(layout), headers=headers)
    if rest == ".zattrs":
        return web.json_response(zarr_layout.level_zattrs(layout), headers=headers)
    if rest in ("", ".zgroup") or rest.startswith("zarr.json") or "/" in rest:
        raise NotFound(f"nothing at {request.path}")
    index = zarr_layout.parse_chunk_key(rest, layout)

    async def produce() -> bytes:
        values = await service.fetch(lane, source, layout.chunk_roi(index))
        return await service.run(zarr_layout.encode_chunk, layout, values)

    body = await service.chunks.get((lane.index, source, index, etag), produce)
    return web.Response(body=body, content_type="application/octet-stream", headers=headers)


async def region(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    lane, source = _lane(request), request.match_info["source"]
    check_source(source)
    query = parse_query(lane, source, request.query, service.settings.max_roi_mb)
    headers = {"ETag": _etag(lane, source), "Cache-Control": "no-cache",
               "X-Axes": query.axes, "X-Shape": ",".join(map(str, query.shape))}
    if query.fmt == "png":
        values = await service.fetch(lane, source, query.roi)
        body = await service.run(png_bytes, query, values, service.class_colors)
        return web.Response(body=body, content_type=FORMATS["png"], headers=headers)
    if query.fmt == "tiff":
        return await _stream_tiff(request, lane, query, headers)
    return await _stream_npy(request, lane, query, headers)


async def _stream_npy(request: web.Request, lane: Lane, query: RoiQuery, headers: dict) -> web.StreamResponse:
    """The header, then the values slab by slab, the next slab computing while one is sent."""
    service = request.app[SERVICE]
    header = npy_header(query)
    response = web.StreamResponse(headers={**headers, "Content-Type": FORMATS["npy"],
                                           "Content-Disposition": f'attachment; filename="{query.source}.npy"'})
    response.content_length = len(header) + query.nbytes
    parts = slabs(query.roi, lane.require_gateway().config.block_shape[1])
    upcoming = asyncio.ensure_future(service.fetch(lane, query.source, parts[0]))
    try:
        first = await upcoming  # an error before anything was sent still gets its JSON answer
        await response.prepare(request)
        await response.write(header)
        values = first
        for following in parts[1:] + [None]:
            upcoming = asyncio.ensure_future(service.fetch(lane, query.source, following)) if following else None
            await response.write(_as_output(values, query).tobytes())
            values = await upcoming if upcoming else None
    finally:
        if upcoming is not None and not upcoming.done():
            upcoming.cancel()
    await response.write_eof()
    return response


def _as_output(values, query: RoiQuery):
    """``(t, z, y, x, c)`` values in the response's axis order."""
    drop = tuple(0 if a not in query.axes else slice(None) for a in "tz")
    return values[drop].astype(query.dtype, copy=False)


async def _stream_tiff(request: web.Request, lane: Lane, query: RoiQuery, headers: dict) -> web.StreamResponse:
    """Slabs written into a temporary TIFF (memory-mapped, so the region is never held in memory), then sent."""
    service = request.app[SERVICE]
    folder = tempfile.mkdtemp(prefix="roi-", dir=service.folder)
    path = os.path.join(folder, f"{query.source}.tif")
    try:
        writer = await service.run(BlockWriter, path, "tif", query.axes, query.roi, query.channels, query.dtype,
                                   lane.require_gateway().config.block_shape)
        try:
            for part in slabs(query.roi, lane.require_gateway().config.block_shape[1]):
                values = await service.fetch(lane, query.source, part)
                await service.run(writer.write, part, values)
            await service.run(writer.commit)
        except BaseException:
            writer.abort()
            raise
        response = web.FileResponse(path, headers={**headers, "Content-Type": FORMATS["tiff"],
                                                   "Content-Disposition": f'attachment; filename="{query.source}.tif"'})
        await response.prepare(request)
        return response
    finally:
        await service.run(_remove_folder, folder)


def _remove_folder(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)


async def metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body = await service.run(service.metrics.exposition)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(describe(request.app[SERVICE].version))


async def docs(request: web.Request) -> web.Response:
    prefix = request.path.rsplit("/", 1)[0]
    return web.Response(text=docs_page(prefix), content_type="text/html")


async def docs_static(request: web.Request) -> web.StreamResponse:
    path = docs_asset(request.match_info["name"])
    if path is None:
        raise NotFound(f"no file {request.match_info['name']} in the docs page's assets")
    return web.FileResponse(path, headers={"Cache-Control": "max-age=86400"})


def error_body(message: str) -> bytes:
    """The JSON body of an error answer."""
    return json.dumps({"error": message}).encode()

