"""The OpenAPI 3 description of the web service and its interactive docs page (Swagger UI, served locally)."""

from __future__ import annotations

import html
import json
import os

SOURCE_NAMES = ["raw", "probabilities", "segmentation", "uncertainty", "objects"]
DOCS_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css")


def _param(name: str, where: str, text: str, schema: dict, required: bool = False) -> dict:
    return {"name": name, "in": where, "description": text, "required": required or where == "path",
            "schema": schema}


_LANE = _param("lane", "path", "index of the project's input lane (see /api/v1/info)", {"type": "integer"})
_SOURCE = _param("source", "path", "what to read", {"type": "string", "enum": SOURCE_NAMES})
_SOURCE3 = _param("source", "path", "what to read; NAME-sharded for the sharded array",
                  {"type": "string", "enum": SOURCE_NAMES + [f"{name}-sharded" for name in SOURCE_NAMES]})
_RANGE = _param("Range", "header", "one byte range: bytes=a-b, bytes=a- or bytes=-n (206, or 416 past the end; "
                "several ranges are answered whole)", {"type": "string"})
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_ERRORS = {code: {"description": text, "content": _ERROR}
           for code, text in (("400", "bad request: what is wrong"), ("401", "token missing or wrong"),
                              ("404", "no such lane, source or chunk"), ("413", "region larger than the limit"),
                              ("416", "byte range outside the answer"))}


def _get(summary: str, params: list[dict], content: dict, tag: str) -> dict:
    return {"get": {"summary": summary, "tags": [tag], "parameters": params,
                    "responses": {"200": {"description": "OK", "content": content}, **_ERRORS}}}


def describe(version: str) -> dict:
    """The OpenAPI document."""
    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    json_any = {"application/json": {"schema": {"type": "object"}}}
    roi_params = [
        _LANE, _SOURCE,
        _param("start", "query", "first voxel along z,y,x (y,x for 2D data); default 0", {"type": "string"}),
        _param("stop", "query", "end (exclusive) along z,y,x (y,x for 2D); default the image's size",
               {"type": "string"}),
        _param("t", "query", "time step or range a:b (default 0)", {"type": "string"}),
        _param("format", "query", "npy (t,z,y,x,c as present, c always), tiff, or png (one plane, 8 bit)",
               {"type": "string", "enum": ["npy", "tiff", "png"], "default": "npy"}),
        _param("channel", "query", "png: the channel shown in grey (default 0)", {"type": "integer"}),
        _param("colors", "query", "png: 1 = the classes' colours blended as the viewer shows them",
               {"type": "integer", "enum": [0, 1]}),
    ]
    paths = {
        "/health": _get("is the server up; workers registered", [], json_any, "service"),
        "/api/v1/info": _get("project, lanes, shapes, axes, classes and sources", [], json_any, "service"),
        "/api/v1/lanes/{lane}/{source}": _get(
            "a region of the raw data or of a result, computed on demand (large regions stream block by block)",
            roi_params, {**binary, "image/tiff": {}, "image/png": {}}, "regions"),
        "/api/v1/lanes/{lane}/objects/table": _get(
            "the Object Features table of one time step (ilastik's Export Table columns: object_id, timestep, "
            "labelimage_oid, intensities, bounding box, centre, size)",
            [_LANE, _param("t", "query", "time step (default 0)", {"type": "integer"}),
             _param("format", "query", "csv (ilastik's CSV table) or json ({columns, rows})",
                    {"type": "string", "enum": ["csv", "json"], "default": "csv"})],
            {"text/csv": {}, **json_any}, "regions"),
        "/zarr/{lane}/{source}/.zattrs": _get("OME-NGFF 0.4 image metadata (multiscales, axes, classes)",
                                              [_LANE, _SOURCE], json_any, "zarr"),
        "/zarr/{lane}/{source}/0/.zarray": _get("zarr v2 array metadata (chunks = the gateway's blocks, Blosc)",
                                                [_LANE, _SOURCE], json_any, "zarr"),
        "/zarr/{lane}/{source}/0/{chunk}": _get(
            "one chunk, computed on demand and Blosc-compressed; ETag carries the classifier's fingerprint",
            [_LANE, _SOURCE, _param("chunk", "path", "chunk key, one index per axis joined by '.', e.g. 0.0.1.2.3",
                                    {"type": "string"})], binary, "zarr"),
        "/zarr3/{lane}/{source}/zarr.json": _get(
            "OME-Zarr 0.5 group (zarr v3): attributes.ome with multiscales, axes, omero; classes. A source named "
            "NAME-sharded (e.g. probabilities-sharded) is the same image with sharded chunks", [_LANE, _SOURCE3],
            json_any, "zarr"),
        "/zarr3/{lane}/{source}/0/zarr.json": _get(
            "zarr v3 array metadata: regular chunk grid of the gateway's blocks (or shards of several blocks), "
            "'/' chunk keys, bytes + Blosc (inside sharding_indexed when sharded), dimension_names",
            [_LANE, _SOURCE3], json_any, "zarr"),
        "/zarr3/{lane}/{source}/0/c/{chunk}": _get(
            "one chunk (or shard: its blocks, then the index) computed on demand; byte ranges answered "
            "(Range: bytes=a-b, a-, -n)",
            [_LANE, _SOURCE3, _param("chunk", "path", "chunk (or shard) index, one per axis joined by '/', "
                                     "e.g. 0/0/1/2", {"type": "string"}), _RANGE], binary, "zarr"),
        "/metrics": _get("Prometheus metrics", [], {"text/plain": {}}, "service"),
        "/viewer": _get(
            "the viewer page: the lane's raw data, probabilities in the classes' colours, segmentation, uncertainty "
            "and objects in neuroglancer (served from this server), following the classifier and thresholds as "
            "they change", [_param("lane", "query", "index of the lane shown (default 0)", {"type": "integer"})],
            {"text/html": {}}, "viewer"),
        "/viewer/versions/{lane}": _get(
            "each source's current version (its ETag): the viewer page asks this to know when to fetch new "
            "results", [_LANE], json_any, "viewer"),
        "/v/{version}/zarr/{lane}/{source}/0/{chunk}": _get(
            "the same as /zarr/... (every path is also answered under /v/{version}/): the version only makes "
            "browsers and viewers fetch again when the results change",
            [_param("version", "path", "any text without '/' (the viewer page uses the source's ETag)",
                    {"type": "string"}), _LANE, _SOURCE,
             _param("chunk", "path", "chunk key, as under /zarr/", {"type": "string"})], binary, "zarr"),
    }
    for item in paths.values():  # every GET is answered to HEAD too (headers and length, no body)
        item["head"] = {**item["get"], "summary": "headers of: " + item["get"]["summary"]}
    return {"openapi": "3.0.3",
            "info": {"title": "ilastik-desktop web service", "version": version,
                     "description": "Raw data and pixel-classification results of an ilastik project, computed "
                                    "block by block on demand. Send the token (if the server has one) as "
                                    "'Authorization: Bearer TOKEN', as ?token=TOKEN, or as a /t/TOKEN prefix "
                                    "of any path (for zarr clients that cannot send headers)."},
            "paths": paths,
            "components": {"schemas": {"Error": {"type": "object", "properties": {"error": {"type": "string"}}}},
                           "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
            "security": [{"token": []}, {}]}


def docs_page(prefix: str) -> str:
    """The interactive docs page; its script and style come from this server, so it works offline.

    ``prefix`` comes from the request's path, so it is escaped for every place it is written: HTML
    attributes, and a JavaScript string inside a script element (where "</" would end the script)."""
    attribute = html.escape(prefix, quote=True)
    script = json.dumps(prefix + "/openapi.json").replace("<", "\\u003c").replace(">", "\\u003e")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ilastik-desktop web service</title>
<link rel="stylesheet" href="{attribute}/doc/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{attribute}/doc/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({{url: {script}, dom_id: "#swagger-ui"}});</script>
</body></html>"""


def docs_asset(name: str) -> str | None:
    """Path of one of Swagger UI's files (from the swagger-ui-bundle package); None for any other name."""
    if name not in DOCS_ASSETS:
        return None
    import swagger_ui_bundle

    path = os.path.join(swagger_ui_bundle.swagger_ui_path, name)
    return path if os.path.exists(path) else None
