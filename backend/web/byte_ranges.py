"""Answers with a whole body that honour a ``Range: bytes=...`` request (RFC 9110), as zarr clients send for
sharded arrays (a suffix range for a shard's index, then the inner chunks' ranges).

One range is answered (``a-b``, ``a-``, the suffix ``-n``) with 206 and ``Content-Range``; a range starting
past the end (or an empty suffix) is a 416 carrying the size. A header naming several ranges, or one this
module cannot read, is ignored and the whole body answered with 200, as RFC 9110 allows. ``If-Range`` with an
ETag other than the current one also gets the whole body.
"""

from __future__ import annotations

import json
import re

from aiohttp import web

RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})")  # longer numbers: ignored


class Unsatisfiable(Exception):
    """A range that selects nothing of a body of ``size`` bytes."""

    def __init__(self, size: int):
        super().__init__(f"the requested range lies outside the {size} bytes of this answer")
        self.size = size


def requested_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The ``[start, stop)`` bytes that a ``Range`` header asks of ``size`` bytes; None to answer everything;
    Unsatisfiable when it selects nothing."""
    found = RANGE.fullmatch(header.strip()) if header else None
    if found is None:
        return None
    first, last = found.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last n bytes
        length = int(last)
        if length == 0 or size == 0:
            raise Unsatisfiable(size)
        return max(size - length, 0), size
    start = int(first)
    stop = size if not last else int(last) + 1
    if last and stop <= start:
        return None  # an invalid range is ignored
    if start >= size:
        raise Unsatisfiable(size)
    return start, min(stop, size)


def answer(request: web.Request, body: bytes, content_type: str, headers: dict[str, str]) -> web.Response:
    """``body`` (all of it, or the one range the request asks for) with ``headers`` and ``Accept-Ranges``."""
    headers = {**headers, "Accept-Ranges": "bytes"}
    if_range = request.headers.get("If-Range")
    wanted = request.headers.get("Range") if if_range is None or if_range == headers.get("ETag") else None
    try:
        span = requested_range(wanted, len(body))
    except Unsatisfiable as exc:
        return web.Response(status=416, body=json.dumps({"error": str(exc)}).encode(), content_type="application/json",
                            headers={**headers, "Content-Range": f"bytes */{exc.size}"})
    if span is None:
        return web.Response(body=body, content_type=content_type, headers=headers)
    start, stop = span
    return web.Response(status=206, body=body[start:stop], content_type=content_type,
                        headers={**headers, "Content-Range": f"bytes {start}-{stop - 1}/{len(body)}"})


def json_answer(request: web.Request, document: dict, headers: dict[str, str]) -> web.Response:
    """A JSON document as :func:`answer` gives it."""
    return answer(request, json.dumps(document).encode(), "application/json", headers)
