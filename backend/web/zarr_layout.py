"""Zarr v2 / OME-NGFF 0.4 documents of a served source, and its chunks encoded as a zarr client reads them."""

from __future__ import annotations

import numpy as np
from numcodecs import Blosc

from backend.checks import decimal
from backend.io.ngff import LEVEL, multiscales
from backend.service.snapshot import PipelineSnapshot
from backend.web.catalog import ArrayLayout, Lane, NotFound

OUR_ATTRS = "ilastik-desktop"


def compressor() -> Blosc:
    """The chunks' compressor: Blosc with lz4 and byte shuffle, which every zarr client decodes."""
    return Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)


def zgroup() -> dict:
    """``.zgroup`` of an image group."""
    return {"zarr_format": 2}


def zattrs(lane: Lane, source: str, classes: list[dict], snapshot: PipelineSnapshot) -> dict:
    """``.zattrs`` of an image group under ``snapshot``: NGFF multiscales with named, typed axes and the raw data's
    voxel size (the same metadata as a zarr export's), plus our own attributes."""
    layout = lane.layout(source, snapshot)
    ours = {"lane": lane.index, "nickname": lane.nickname, "source": source,
            "data_fingerprint": snapshot.data_fingerprint, "classifier": snapshot.fingerprint}
    if source != "raw":
        ours["classes"] = classes
    voxel_size = lane.require_gateway().source.voxel_size
    attrs = {"multiscales": multiscales(f"{lane.nickname} {source}", layout.axes, voxel_size), OUR_ATTRS: ours}
    if source in ("probabilities", "uncertainty") and "c" in layout.axes:
        attrs["omero"] = omero_channels(classes if source == "probabilities" else [])
    return attrs


def omero_channels(classes: list[dict]) -> dict:
    """NGFF's ``omero`` display hints: one channel per class with its name and colour, values 0 to 1
    (viewers such as napari name and colour the channels from it); a single grey channel without classes."""
    shown = classes or [{"name": "uncertainty", "color": [255, 255, 255]}]
    window = {"start": 0.0, "end": 1.0, "min": 0.0, "max": 1.0}
    return {"channels": [{"label": c["name"], "color": "".join(f"{v:02X}" for v in c["color"][:3]),
                          "window": window, "active": True} for c in shown]}


def zarray(layout: ArrayLayout) -> dict:
    """``.zarray`` of the full-resolution array: chunks = gateway blocks, Blosc, fill value 0."""
    return {"zarr_format": 2, "shape": list(layout.shape), "chunks": list(layout.chunks),
            "dtype": layout.dtype.str, "compressor": compressor().get_config(), "fill_value": 0, "order": "C",
            "filters": None, "dimension_separator": "."}


def level_zattrs(layout: ArrayLayout) -> dict:
    """``.zattrs`` of the array itself (axis names for clients that look there, as xarray does)."""
    return {"_ARRAY_DIMENSIONS": list(layout.axes)}


def parse_chunk_key(key: str, layout: ArrayLayout) -> tuple[int, ...]:
    """The chunk index of a key such as ``0.0.1.2.3``; NotFound for a malformed or out-of-range key."""
    parts = key.split(".")
    numbers = [decimal(p, 1 << 40) for p in parts]
    if len(parts) != len(layout.axes) or None in numbers:
        raise NotFound(f"'{key[:100]}' is not a chunk key of this array (expected {len(layout.axes)} numbers "
                       f"joined by '.', one per axis {layout.axes})")
    index = tuple(numbers)
    layout.chunk_roi(index)  # raises NotFound outside the array
    return index


def encode_chunk(layout: ArrayLayout, values: np.ndarray) -> bytes:
    """One chunk's ``(t, z, y, x, c)`` values, padded to the full chunk shape (as zarr v2 stores edge chunks)
    and compressed."""
    data = layout.to_ngff(values).astype(layout.dtype, copy=False)
    if data.shape != layout.chunks:
        padded = np.zeros(layout.chunks, layout.dtype)
        padded[tuple(slice(0, s) for s in data.shape)] = data
        data = padded
    return compressor().encode(np.ascontiguousarray(data))


def check_level(level: str) -> None:
    """NotFound for any resolution level but the full one."""
    if level != LEVEL:
        raise NotFound(f"no resolution level '{level}' (this server has level {LEVEL} only)")
