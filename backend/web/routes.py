"""The web service's endpoints: health, info, ROI regions, zarr v2 and v3 documents and chunks, metrics, docs.

Handlers never block the event loop: gateway requests (cache look-ups, raw reads) and encoding run on the
service's thread pool, results are awaited as futures.
"""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
from aiohttp import web

from backend.checks import decimal
from backend.errors import UserError
from backend.service.gateway import PREFETCH
from backend.service.object_table import block_bytes, csv_text, frame_rows, json_rows
from backend.service.objects import frame_roi
from backend.web import zarr3_layout, zarr_layout
from backend.web.byte_ranges import answer, json_answer
from backend.web.catalog import Lane, LaneView, NotFound, check_source
from backend.web.openapi import describe, docs_asset, docs_page
from backend.web.roi_query import FORMATS, RoiQuery, npy_header, parse_query, png_bytes, slabs, tiff_frame

SERVICE = web.AppKey("service", object)


def add_routes(app: web.Application, prefix: str = "") -> None:
    """Register every endpoint under ``prefix`` (empty, or ``/t/{token}`` for token-in-path clients)."""
    app.router.add_get(prefix + "/health", health)
    app.router.add_get(prefix + "/api/v1/info", info)
    app.router.add_get(prefix + "/api/v1/lanes/{lane}/objects/table", objects_table)
    app.router.add_get(prefix + "/api/v1/lanes/{lane}/{source}", region)
    app.router.add_get(prefix + "/zarr/{lane}/{source}/{path:.*}", zarr_document)
    app.router.add_get(prefix + "/zarr3/{lane}/{source}/{path:.*}", zarr3_document)
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


def _not_modified(request: web.Request, etag: str) -> bool:
    return etag in [tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")]


async def zarr_document(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    lane, source = _lane(request), request.match_info["source"].removesuffix(".zarr")  # napari wants *.zarr
    check_source(source)
    path = request.match_info["path"].strip("/")
    view = lane.view()  # the ETag, the layout and the chunk all come from this one snapshot
    etag = view.etag(source)
    if _not_modified(request, etag):
        return web.Response(status=304, headers={"ETag": etag})
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    documents = {".zgroup": zarr_layout.zgroup,
                 ".zattrs": lambda: zarr_layout.zattrs(lane, source, service.classes, view.snapshot)}
    if path in documents:
        return json_answer(request, documents[path](), headers)
    level, _, rest = path.partition("/")
    zarr_layout.check_level(level)
    layout = lane.layout(source, view.snapshot)
    if rest == ".zarray":
        return json_answer(request, zarr_layout.zarray(layout), headers)
    if rest == ".zattrs":
        return json_answer(request, zarr_layout.level_zattrs(layout), headers)
    if rest in ("", ".zgroup") or rest.startswith("zarr.json") or "/" in rest:
        raise NotFound(f"nothing at {request.path}")
    index = zarr_layout.parse_chunk_key(rest, layout)

    async def produce() -> bytes:
        async with service.budget.hold(2 * int(np.prod(layout.chunks)) * layout.dtype.itemsize):  # values, padded
            values = await service.fetch(lane, source, layout.chunk_roi(index), view)
            return await service.run(zarr_layout.encode_chunk, layout, values)

    body = await service.chunks.get((lane.index, source, index, etag), produce)
    return answer(request, body, "application/octet-stream", headers)


async def zarr3_document(request: web.Request) -> web.StreamResponse:
    """OME-Zarr 0.5 (zarr v3): the group's and the array's ``zarr.json``, and chunks (or shards) at
    ``0/c/i/j/...``; a source named ``NAME-sharded`` is the same image with sharded chunks."""
    service = request.app[SERVICE]
    lane = _lane(request)
    source, sharded = zarr3_layout.split_source(request.match_info["source"])
    check_source(source)
    path = request.match_info["path"].strip("/")
    view = lane.view()  # the ETag, the layout and the chunk all come from this one snapshot
    etag = view.etag(source)
    if _not_modified(request, etag):
        return web.Response(status=304, headers={"ETag": etag})
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if path == "zarr.json":
        return json_answer(request, zarr3_layout.group(lane, source, service.classes, view.snapshot), headers)
    level, _, rest = path.partition("/")
    zarr_layout.check_level(level)
    served = zarr3_layout.zarr3_array(lane.layout(source, view.snapshot), sharded,
                                      service.settings.limits.shard_blocks)
    if rest == "zarr.json":
        return json_answer(request, zarr3_layout.array(served), headers)
    index = zarr3_layout.parse_chunk_key(rest, served)
    roi = served.grid.chunk_roi(index)
    held = 2 * int(np.prod(served.grid.chunks)) * served.layout.dtype.itemsize  # values, padded

    async def produce() -> bytes:
        async with service.budget.hold(held):
            values = await service.fetch(lane, source, roi, view)
            if sharded:
                return await service.run(zarr3_layout.encode_shard, served, index, values)
            return await service.run(zarr3_layout.encode_chunk, served, values)

    same_as_v2 = not sharded and served.little_endian.dtype == served.layout.dtype  # the v2 chunk's very bytes
    key = (lane.index, source, index, etag) if same_as_v2 else (lane.index, source, sharded, "v3", index, etag)
    body = await service.chunks.get(key, produce)
    return answer(request, body, "application/octet-stream", headers)


async def region(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    lane, source = _lane(request), request.match_info["source"]
    check_source(source)
    view = lane.view()
    query = parse_query(lane, source, request.query, service.settings.max_roi_mb, view.snapshot)
    headers = {"ETag": view.etag(source), "Cache-Control": "no-cache",
               "X-Axes": query.axes, "X-Shape": ",".join(map(str, query.shape))}
    if query.fmt == "png":
        async with service.budget.hold(2 * query.nbytes):  # the plane and its image
            values = await service.fetch(lane, source, query.roi, view)
            body = await service.run(png_bytes, query, values, service.class_colors)
        return web.Response(body=body, content_type=FORMATS["png"], headers=headers)
    return await _stream(request, lane, view, query, headers)


async def _stream(request: web.Request, lane: Lane, view: LaneView, query: RoiQuery,
                  headers: dict) -> web.StreamResponse:
    """The file's head, then the values slab by slab (the next slab computing while one is sent), then its
    tail: ``.npy`` has no tail, a TIFF's directories follow its values. At most two slabs are held."""
    service = request.app[SERVICE]
    if query.fmt == "tiff":
        head, tail = await service.run(tiff_frame, query, service.folder)
    else:
        head, tail = npy_header(query), b""
    extension = {"npy": "npy", "tiff": "tif"}[query.fmt]
    response = web.StreamResponse(headers={**headers, "Content-Type": FORMATS[query.fmt],
                                           "Content-Disposition": f'attachment; filename="{query.source}.{extension}"'})
    response.content_length = len(head) + query.nbytes + len(tail)
    if request.method == "HEAD":  # the length is known without computing anything
        await response.prepare(request)
        return response
    parts = slabs(query.roi, lane.require_gateway().config.block_shape[1])
    slab = max(int(np.prod(part.shape)) for part in parts) * query.channels * query.dtype.itemsize
    held = min(2, len(parts)) * slab
    async with service.budget.hold(held):
        upcoming = asyncio.ensure_future(service.fetch(lane, query.source, parts[0], view))
        try:
            values = await upcoming  # an error before anything was sent still gets its JSON answer
            await response.prepare(request)
            await response.write(head)
            for following in parts[1:] + [None]:
                upcoming = asyncio.ensure_future(service.fetch(lane, query.source, following, view)) \
                    if following else None
                await _write(response, memoryview(_as_output(values, query)).cast("B"))
                values = await upcoming if upcoming else None
            await response.write(tail)
        finally:
            if upcoming is not None and not upcoming.done():
                upcoming.cancel()
    await response.write_eof()
    return response


async def _write(response: web.StreamResponse, data: memoryview, piece: int = 1 << 20) -> None:
    """Send ``data`` a megabyte at a time: the connection's buffer never holds a copy of a whole slab."""
    for start in range(0, len(data), piece):
        await response.write(data[start:start + piece])


def _as_output(values, query: RoiQuery) -> np.ndarray:
    """``(t, z, y, x, c)`` values in the response's axis order, contiguous."""
    drop = tuple(0 if a not in query.axes else slice(None) for a in "tz")
    return np.ascontiguousarray(values[drop].astype(query.dtype, copy=False))


TABLE_FORMATS = {"csv": "text/csv", "json": "application/json"}
TABLE_BLOCKS_AHEAD = 2  # blocks of labels a table request holds: one being measured, the next arriving


async def objects_table(request: web.Request) -> web.Response:
    """The Object Features table of one time step (``t``, default 0) as CSV (default) or JSON."""
    service = request.app[SERVICE]
    lane = _lane(request)
    gateway = lane.require_gateway()
    fmt = request.query.get("format", "csv")
    if fmt not in TABLE_FORMATS:
        raise UserError(f"unknown format '{fmt[:40]}' (choose one of {', '.join(TABLE_FORMATS)})")
    frames = gateway.source.spatial_shape[0]
    t = decimal(request.query.get("t", "0"), frames - 1)
    if t is None:
        raise UserError(f"t '{request.query['t'][:40]}' is not a time step of the lane (0 to {frames - 1})")
    view = lane.view()
    gone = threading.Event()  # the client went away: the table's blocks are let go

    def stop_if_gone() -> None:
        if gone.is_set():
            raise ConnectionResetError("the client went away")

    async with service.budget.hold(TABLE_BLOCKS_AHEAD * block_bytes(gateway)):
        try:
            table = await service.run(frame_rows, gateway, frame_roi(gateway, t), view.threshold, PREFETCH,
                                      view.snapshot, stop_if_gone, TABLE_BLOCKS_AHEAD)
        except asyncio.CancelledError:
            gone.set()
            raise
    headers = {"ETag": view.etag("objects"), "Cache-Control": "no-cache"}
    if fmt == "json":
        return web.json_response(await service.run(json_rows, table), headers=headers)
    headers["Content-Disposition"] = f'attachment; filename="objects_table_t{t}.csv"'
    return web.Response(text=await service.run(csv_text, table), content_type="text/csv", headers=headers)


async def metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    service.metrics.sample()
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

