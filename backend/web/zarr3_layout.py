"""Zarr v3 / OME-Zarr 0.5 documents of a served source, and its chunks or shards encoded as a zarr v3 client
reads them.

Unsharded, a chunk is one gateway block, encoded exactly as the zarr v2 chunk (bytes little-endian, then
Blosc lz4 with byte shuffle). Sharded (the source's name ending in :data:`SHARDED`), one shard holds up to
``shard_blocks`` blocks along each spatial axis; its inner chunks are those blocks, followed by the index
(``sharding_indexed``: one little-endian ``(offset, nbytes)`` pair of uint64 per inner chunk, C order, at the
end; inner chunks wholly outside the array are absent, marked by 2**64-1 twice).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import numpy as np

from backend.checks import decimal
from backend.service.snapshot import PipelineSnapshot
from backend.web import zarr_layout
from backend.web.catalog import ArrayLayout, Lane, NotFound

SHARDED = "-sharded"  # suffix of a source's name that serves it sharded
ABSENT = np.iinfo(np.uint64).max  # index entry of an inner chunk that is not stored
SPATIAL = "zyx"  # the axes a shard spans several blocks along


@dataclass(frozen=True)
class Zarr3Array:
    """The full-resolution array of a source as zarr v3: its layout and, if sharded, the blocks per shard
    along each axis."""

    layout: ArrayLayout
    shard: tuple[int, ...] | None = None

    @property
    def grid(self) -> ArrayLayout:
        """The layout of what one key addresses: a chunk (one block), or a shard."""
        if self.shard is None:
            return self.layout
        return dataclasses.replace(self.layout, chunks=tuple(c * n for c, n in zip(self.layout.chunks, self.shard)))

    @property
    def little_endian(self) -> ArrayLayout:
        """The layout with its dtype little-endian, as the ``bytes`` codec writes it."""
        return dataclasses.replace(self.layout, dtype=self.layout.dtype.newbyteorder("<"))


def zarr3_array(layout: ArrayLayout, sharded: bool, shard_blocks: int) -> Zarr3Array:
    """``layout`` served unsharded, or with shards of ``shard_blocks`` blocks along each spatial axis (fewer
    where the array has fewer)."""
    if not sharded:
        return Zarr3Array(layout)
    shard = tuple(min(shard_blocks, math.ceil(s / c)) if a in SPATIAL else 1
                  for a, s, c in zip(layout.axes, layout.shape, layout.chunks))
    return Zarr3Array(layout, shard)


def split_source(name: str) -> tuple[str, bool]:
    """A source path segment (``probabilities``, ``probabilities-sharded``, either ending in ``.zarr``) as the
    source's name and whether it is served sharded."""
    name = name.removesuffix(".zarr")
    return name.removesuffix(SHARDED), name.endswith(SHARDED)


def group(lane: Lane, source: str, classes: list[dict], snapshot: PipelineSnapshot) -> dict:
    """The image group's ``zarr.json``: OME-Zarr 0.5 metadata under ``attributes.ome`` (the same multiscales
    and omero hints as the 0.4 ``.zattrs``, without the per-entry version), and our own attributes."""
    attrs = zarr_layout.zattrs(lane, source, classes, snapshot)
    ome = {"version": "0.5", "multiscales": [{k: v for k, v in entry.items() if k != "version"}
                                             for entry in attrs.pop("multiscales")]}
    if "omero" in attrs:
        ome["omero"] = attrs.pop("omero")
    return {"zarr_format": 3, "node_type": "group", "attributes": {"ome": ome, **attrs}}


def _codecs(layout: ArrayLayout) -> list[dict]:
    blosc = zarr_layout.compressor()
    return [{"name": "bytes", "configuration": {"endian": "little"}},
            {"name": "blosc", "configuration": {"cname": blosc.cname, "clevel": blosc.clevel, "shuffle": "shuffle",
                                                "typesize": layout.dtype.itemsize, "blocksize": 0}}]


def array(served: Zarr3Array) -> dict:
    """The array's ``zarr.json``: shape, a regular chunk grid of blocks (or shards), ``/`` chunk keys, codecs,
    fill value 0 and the axes as dimension names."""
    layout = served.layout
    codecs = _codecs(layout)
    if served.shard is not None:
        codecs = [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": list(layout.chunks), "codecs": codecs,
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}], "index_location": "end"}}]
    fill = False if layout.dtype.kind == "b" else 0.0 if layout.dtype.kind == "f" else 0
    return {"zarr_format": 3, "node_type": "array", "shape": list(layout.shape), "data_type": layout.dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(served.grid.chunks)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "codecs": codecs, "fill_value": fill, "attributes": {}, "dimension_names": list(layout.axes)}


def parse_chunk_key(key: str, served: Zarr3Array) -> tuple[int, ...]:
    """The chunk (or shard) index of a key such as ``c/0/1/2/3``; NotFound for a malformed or out-of-range key."""
    axes = served.layout.axes
    parts = key.split("/")
    numbers = [decimal(p, 1 << 40) for p in parts[1:]]
    if parts[0] != "c" or len(numbers) != len(axes) or None in numbers:
        raise NotFound(f"'{key[:100]}' is not a chunk key of this array (expected 'c' and {len(axes)} numbers "
                       f"joined by '/', one per axis {axes})")
    index = tuple(numbers)
    try:
        served.grid.chunk_roi(index)
    except NotFound as outside:  # the grid names the chunk in v2 form: name it as it was asked for
        raise NotFound(str(outside).replace(f"no chunk {'.'.join(map(str, index))}",
                                           f"no chunk c/{'/'.join(map(str, index))}", 1)) from None
    return index


def encode_chunk(served: Zarr3Array, values: np.ndarray) -> bytes:
    """One unsharded chunk's ``(t, z, y, x, c)`` values, padded to the chunk shape and encoded."""
    return zarr_layout.encode_chunk(served.little_endian, values)


def encode_shard(served: Zarr3Array, index: tuple[int, ...], values: np.ndarray) -> bytes:
    """The shard at ``index`` from its ``(t, z, y, x, c)`` values (the shard's region clipped to the array):
    its inner chunks, each padded and encoded, then the index."""
    layout, start = served.little_endian, served.grid.chunk_roi(index).start
    parts, entries, offset = [], [], 0
    for inner in itertools.product(*(range(n) for n in served.shard)):
        position = tuple(i * n + j for i, n, j in zip(index, served.shard, inner))
        if any(p * c >= s for p, c, s in zip(position, layout.chunks, layout.shape)):
            entries.append((ABSENT, ABSENT))
            continue
        roi = layout.chunk_roi(position)
        here = tuple(slice(a - s, b - s) for a, b, s in zip(roi.start, roi.stop, start))
        encoded = zarr_layout.encode_chunk(layout, values[here])
        parts.append(encoded)
        entries.append((offset, len(encoded)))
        offset += len(encoded)
    parts.append(np.array(entries, dtype="<u8").tobytes())
    return b"".join(parts)

