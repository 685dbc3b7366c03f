"""What the web service offers: the project's lanes, and per lane the raw data and every result as an array.

Arrays are seen in OME-NGFF axis order (t, c, z, y, x, each only where present) and cut into chunks that are
the gateway's blocks, so a chunk is exactly one block through the gateway (cached, claimed, computed once).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from backend.compute.geometry import Roi
from backend.compute.threshold import ThresholdSettings, settings_fingerprint
from backend.errors import UserError
from backend.io.ngff import ORDER, ngff_axes
from backend.service.gateway import RAW, Gateway
from backend.service.objects import OBJECTS, request_objects
from backend.service.snapshot import PipelineSnapshot

SOURCES = {"raw": RAW, "probabilities": "Probabilities", "segmentation": "Simple Segmentation",
           "uncertainty": "Uncertainty", "objects": OBJECTS}


class NotFound(UserError):
    """A lane, source or chunk that does not exist (HTTP 404)."""


@dataclass(frozen=True)
class ArrayLayout:
    """One source of one lane as an array: NGFF axes, shape, chunk shape and dtype."""

    axes: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype

    def chunk_roi(self, index: tuple[int, ...]) -> Roi:
        """The tzyx region of the chunk at ``index`` (one number per axis); NotFound outside the array."""
        if len(index) != len(self.axes) or any(i < 0 or i * c >= s for i, c, s in zip(index, self.chunks,
                                                                                          self.shape)):
            raise NotFound(f"no chunk {'.'.join(map(str, index))} in an array of {len(self.axes)} axes "
                           f"{self.axes} with shape {self.shape} and chunks {self.chunks}")
        bounds = {a: (i * c, min((i + 1) * c, s)) for a, i, c, s in zip(self.axes, index, self.chunks, self.shape)}
        spans = [bounds.get(a, (0, 1)) for a in "tzyx"]
        return Roi(tuple(a for a, _ in spans), tuple(b for _, b in spans))

    def to_ngff(self, values: np.ndarray) -> np.ndarray:
        """``(t, z, y, x, c)`` values in this array's axis order."""
        ordered = values.transpose(0, 4, 1, 2, 3)  # t c z y x
        return ordered[tuple(slice(None) if a in self.axes else 0 for a in ORDER)]


@dataclass(frozen=True)
class LaneView:
    """One request's view of a lane: the pipeline snapshot and the thresholding its answer and ETag come from."""

    snapshot: PipelineSnapshot
    threshold: ThresholdSettings

    def etag(self, source: str) -> str:
        """The ETag of ``source``'s answers: data, classifier (not for raw) and thresholding (objects)."""
        classifier = "" if source == "raw" else f"-{self.snapshot.fingerprint}"
        threshold = f"-{settings_fingerprint(self.threshold)}" if source == "objects" else ""
        return f'"{self.snapshot.data_fingerprint}{classifier}{threshold}"'


class Fetch(Protocol):
    """Values being assembled: their future, and a way to stop (the blocks nobody else wants are dropped)."""

    future: Future

    def cancel(self) -> None: ...


class Lane:
    """One lane of the project, served through its gateway (None with ``error`` when its data did not open)."""

    def __init__(self, index: int, nickname: str, gateway: Gateway | None, threshold: ThresholdSettings | None = None,
                 error: str | None = None):
        self.index, self.nickname, self.gateway, self.error = index, nickname, gateway, error
        self.threshold = threshold or ThresholdSettings()

    def require_gateway(self) -> Gateway:
        """The gateway; UserError saying why this lane cannot be served without one."""
        if self.gateway is None:
            raise UserError(f"lane {self.index} ({self.nickname}) is not available: {self.error}")
        return self.gateway

    def layout(self, source: str, snapshot: PipelineSnapshot | None = None) -> ArrayLayout:
        """How ``source`` is laid out under ``snapshot`` (default: the gateway's current one); NotFound for an
        unknown source."""
        check_source(source)
        gateway = self.require_gateway()
        pipeline = (snapshot or gateway.snapshot).pipeline
        raw = gateway.source
        present = {a for a in "tz" if a in raw.axes} | {"y", "x"}
        if source != "raw" or "c" in raw.axes:
            present.add("c")
        axes = ngff_axes("".join(present))
        kind = SOURCES[source]
        if source == "raw":
            channels, dtype = raw.channels, raw.dtype
        elif kind == OBJECTS:  # announced before any labelling: wide enough for any frame's IDs
            channels, dtype = 1, np.dtype(np.uint64)
        else:
            channels, dtype = pipeline.channels(kind), pipeline.dtype(kind)
        sizes = dict(zip("tzyx", raw.spatial_shape), c=channels)
        block = dict(zip("tzyx", gateway.config.block_shape), c=channels)
        shape = tuple(sizes[a] for a in axes)
        return ArrayLayout(axes, shape, tuple(min(block[a], sizes[a]) for a in axes), np.dtype(dtype))

    def view(self) -> LaneView:
        """What the lane computes now (pipeline and thresholding), taken once for one request."""
        return LaneView(self.require_gateway().snapshot, self.threshold)

    def fetch(self, source: str, roi: Roi, priority: int, view: LaneView) -> Fetch:
        """``source``'s ``(t, z, y, x, c)`` values over a tzyx ``roi`` of one time step, computed as ``view``
        says, being assembled (blocking only for raw reads)."""
        gateway = self.require_gateway()
        kind = SOURCES[source]
        if kind != OBJECTS:
            return gateway.request(kind, roi, priority, snapshot=view.snapshot)
        if roi.shape[0] != 1:
            raise ValueError(f"objects are fetched one time step at a time, not {roi}")
        return request_objects(gateway, roi, view.threshold, priority, snapshot=view.snapshot)

    def describe(self) -> dict:
        """The lane for ``/api/v1/info``: nickname, axes and shape of each source, or why it is unavailable."""
        if self.gateway is None:
            return {"index": self.index, "nickname": self.nickname, "error": self.error}
        raw, snapshot = self.gateway.source, self.gateway.snapshot
        sources = {}
        for name in SOURCES:
            layout = self.layout(name, snapshot)
            sources[name] = {"axes": layout.axes, "shape": list(layout.shape), "chunks": list(layout.chunks),
                             "dtype": layout.dtype.str}
        return {"index": self.index, "nickname": self.nickname, "raw_axes": raw.axes,
                "spatial_axes": spatial_axes(raw.axes), "shape_tzyx": list(raw.spatial_shape),
                "data_fingerprint": snapshot.data_fingerprint, "classifier": snapshot.fingerprint,
                "sources": sources}


def check_source(source: str) -> None:
    """NotFound for an unknown source name."""
    if source not in SOURCES:
        raise NotFound(f"unknown source '{source}' (choose one of {', '.join(SOURCES)})")


def spatial_axes(raw_axes: str) -> str:
    """The axes a ROI's ``start`` and ``stop`` are given in: z (if present), y, x."""
    return "".join(a for a in "zyx" if a in raw_axes or a in "yx")
