"""The versioned ROI API's request: which lane, source, region, time steps and format, checked.

``start`` and ``stop`` are comma-separated voxel positions along the lane's spatial axes (``z,y,x``, or
``y,x`` for 2D data), ``stop`` exclusive; ``t`` is one time step or a range ``a:b``. Values come back in the
axis order t, z, y, x, c (t and z only where the data has them; c always).
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from backend.checks import decimal
from backend.compute.geometry import Roi
from backend.errors import UserError
from backend.service.objects import OBJECTS
from backend.service.rendering import blend_classes, objects_rgba, segmentation_rgba
from backend.service.snapshot import PipelineSnapshot
from backend.web.catalog import SOURCES, Lane, spatial_axes

FORMATS = {"npy": "application/octet-stream", "tiff": "image/tiff", "png": "image/png"}


class TooLarge(UserError):
    """A region beyond the configured limit (HTTP 413)."""


@dataclass(frozen=True)
class RoiQuery:
    """A checked ROI request."""

    source: str
    roi: Roi  # tzyx
    fmt: str
    axes: str  # of the returned array
    channels: int
    dtype: np.dtype
    channel: int | None = None  # png: this channel as grey values
    colors: bool = False  # png: the classes' colours as the viewer shows them

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the returned array."""
        sizes = dict(zip("tzyx", self.roi.shape), c=self.channels)
        return tuple(sizes[a] for a in self.axes)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


def parse_query(lane: Lane, source: str, query: Mapping[str, str], max_mb: float,
                snapshot: PipelineSnapshot) -> RoiQuery:
    """The request from its query parameters (channels and dtype under ``snapshot``); UserError (400), NotFound
    (404) or TooLarge (413) saying why not."""
    layout = lane.layout(source, snapshot)
    raw = lane.require_gateway().source
    axes = spatial_axes(raw.axes)
    full = dict(zip("tzyx", raw.spatial_shape))
    start = _positions(query.get("start"), axes, "start", [0] * len(axes))
    stop = _positions(query.get("stop"), axes, "stop", [full[a] for a in axes])
    t0, t1 = _time(query.get("t", "0"), full["t"])
    spans = {"t": (t0, t1), **{a: (b, e) for a, b, e in zip(axes, start, stop)}}
    for a in axes:
        b, e = spans[a]
        if not 0 <= b < e <= full[a]:
            raise UserError(f"{a} from {b} to {e} is outside the image (0 to {full[a]}) or empty")
    roi = Roi(tuple(spans.get(a, (0, 1))[0] for a in "tzyx"), tuple(spans.get(a, (0, 1))[1] for a in "tzyx"))
    fmt = query.get("format", "npy")
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}' (choose one of {', '.join(FORMATS)})")
    channels = layout.shape[layout.axes.index("c")] if "c" in layout.axes else 1
    out_axes = "".join(a for a in "tzyx" if a in layout.axes) + "c"
    request = RoiQuery(source, roi, fmt, out_axes, channels, layout.dtype)
    if fmt == "png":
        request = _png_options(request, query)
    if request.nbytes > max_mb * 1e6:
        raise TooLarge(f"the region is {request.nbytes / 1e6:.1f} MB, more than this server's limit of {max_mb:g} "
                       "MB (--max-roi-mb); ask for smaller regions")
    return request


def _positions(text: str | None, axes: str, name: str, default: list[int]) -> list[int]:
    if text is None:
        return default
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{name}='{text}': expected {len(axes)} whole numbers for the axes {','.join(axes)}") from None
    if len(values) != len(axes):
        raise UserError(f"{name}='{text}': expected {len(axes)} numbers, one per axis {','.join(axes)}")
    return values


def _time(text: str, steps: int) -> tuple[int, int]:
    try:
        first, _, last = text.partition(":")
        t0 = int(first)
        t1 = int(last) if last else t0 + 1
    except ValueError:
        raise UserError(f"t='{text}': expected a time step such as 3 or a range such as 0:10") from None
    if not 0 <= t0 < t1 <= steps:
        raise UserError(f"t='{text}' is outside the time steps 0 to {steps - 1} or empty")
    return t0, t1


def _png_options(request: RoiQuery, query: Mapping[str, str]) -> RoiQuery:
    if request.roi.shape[0] != 1 or request.roi.shape[1] != 1:
        raise UserError("format=png needs one plane: one time step and, for 3D data, stop z = start z + 1")
    colors = query.get("colors", "0").lower() in ("1", "true", "yes")
    if colors and request.source == "raw":
        raise UserError("colors=1 colours results; the raw data has no class colours")
    text = query.get("channel", "0")
    channel = decimal(text, request.channels - 1)
    if channel is None:
        raise UserError(f"channel='{text[:40]}': expected a channel from 0 to {request.channels - 1}")
    return RoiQuery(request.source, request.roi, "png", request.axes, request.channels, request.dtype,
                    channel=channel, colors=colors)


def slabs(roi: Roi, z_block: int) -> list[Roi]:
    """``roi`` cut into slabs of one time step and one block row along z: the order of the values in C order,
    so each slab's bytes follow the previous slab's in the response."""
    out = []
    for t in range(roi.start[0], roi.stop[0]):
        z = roi.start[1]
        while z < roi.stop[1]:
            end = min(roi.stop[1], (z // z_block + 1) * z_block)
            out.append(Roi((t, z, *roi.start[2:]), (t + 1, end, *roi.stop[2:])))
            z = end
    return out


def npy_header(request: RoiQuery) -> bytes:
    """The ``.npy`` header of the whole response (the values follow slab by slab)."""
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(request.dtype), "fortran_order": False,
              "shape": request.shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def tiff_frame(request: RoiQuery, folder: str) -> tuple[bytes, bytes]:
    """What a TIFF of the region holds before and after its values, which lie between them in the order of
    the ``.npy`` answer (so the values are streamed slab by slab; the file made to find out is sparse)."""
    import tifffile

    shape, axes, options = request.shape, request.axes.upper(), {"photometric": "minisblack"}
    if request.channels == 1:
        shape, axes = shape[:-1], axes[:-1]
    else:
        axes, options["planarconfig"] = axes[:-1] + "S", "contig"
    with tempfile.NamedTemporaryFile(suffix=".tif", dir=folder) as empty:
        tifffile.imwrite(empty.name, shape=shape, dtype=request.dtype, metadata={"axes": axes}, **options)
        with tifffile.TiffFile(empty.name) as tiff:
            offset = tiff.series[0].dataoffset
        if offset is None:
            raise RuntimeError(f"tifffile did not lay out a {shape} TIFF contiguously")
        empty.seek(0)
        head = empty.read(offset)
        empty.seek(offset + request.nbytes)
        return head, empty.read()


def png_bytes(request: RoiQuery, values: np.ndarray, colors) -> bytes:
    """One plane ``(1, 1, y, x, c)`` as an 8-bit PNG: one channel scaled to 0-255, or RGBA in the classes'
    colours."""
    import imageio.v3 as iio

    plane = values[0, 0]
    kind = SOURCES[request.source]
    if request.colors:
        if kind == "Probabilities":
            image = blend_classes(plane, colors)
        elif kind == OBJECTS:
            image = objects_rgba(plane[..., 0], 1.0)
        elif kind == "Simple Segmentation":
            image = segmentation_rgba(plane[..., 0], colors, 1.0)
        else:
            raise UserError(f"colors=1 is for probabilities, segmentation and objects, not {request.source}")
    else:
        image = _grey(plane[..., request.channel], kind)
    return iio.imwrite("<bytes>", image, extension=".png")


def _grey(channel: np.ndarray, kind: str) -> np.ndarray:
    if kind in ("Probabilities", "Uncertainty"):
        return np.clip(np.round(channel * 255), 0, 255).astype(np.uint8)
    if channel.dtype == np.uint8 or kind in ("Simple Segmentation", OBJECTS):
        return (channel % 256).astype(np.uint8) if kind == OBJECTS else channel.astype(np.uint8)
    low, high = float(channel.min()), float(channel.max())  # raw data of other types: stretched to 0-255
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip(np.round((channel - low) * scale), 0, 255).astype(np.uint8)
