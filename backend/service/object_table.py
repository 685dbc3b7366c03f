"""The Object Features table of a lane: features of the Objects layer's objects over the raw data, frame by
frame, and the table written as ilastik's Export Table writes it (CSV with a header line, or HDF5 with one
compound dataset ``table``)."""

from __future__ import annotations

import contextlib
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import wait

import numpy as np

from backend.compute.geometry import Roi
from backend.compute.object_features import ObjectStats, StatsMerger, block_stats, feature_table
from backend.compute.threshold import ThresholdSettings
from backend.errors import UserError
from backend.io.sources import DataSource
from backend.service.gateway import Gateway
from backend.service.objects import ObjectsRequest, object_block_shape, object_blocks, request_objects
from backend.service.snapshot import PipelineSnapshot

OBJECT_FEATURES = "Object Features"
TABLE_FORMATS = {"csv": ".csv", "hdf5": ".h5"}
TABLE_DATASET = "table"  # ilastik's ExportFile writes its table under this name


def stream_stats(gateway: Gateway, region: Roi, settings: ThresholdSettings, priority: int,
                 snapshot: PipelineSnapshot | None = None, ahead: int = 2,
                 check: Callable[[], None] | None = None) -> Iterator[tuple[int, ObjectStats]]:
    """``(t, statistics)`` of the objects of each time step of ``region``, in order (coordinates are the frame's).

    The Objects layer's labels are asked for one object block at a time, at most ``ahead`` blocks at once, each
    labelled with its frame's IDs; a block's partial statistics are computed over the matching block of raw data
    and merged per frame. Memory is bounded by ``ahead`` blocks and the per-object statistics, never by a frame.
    ``check()`` is called while waiting (it may raise to stop); blocks still asked for are then let go.
    """
    source = gateway.source
    blocks = (block.intersect(region) for block in object_blocks(gateway, region))
    pending: deque[ObjectsRequest] = deque()
    merger, frame = StatsMerger(source.channels, source.dtype), region.start[0]
    try:
        while True:
            for block in blocks:
                pending.append(request_objects(gateway, block, settings, priority, snapshot=snapshot))
                if len(pending) >= ahead:
                    break
            if not pending:
                break
            request = pending[0]
            if request.roi.start[0] != frame:
                yield frame, merger.result()
                merger, frame = StatsMerger(source.channels, source.dtype), request.roi.start[0]
            while not wait([request.future], timeout=0.5).done:
                if check is not None:
                    check()
            pending.popleft()
            roi = request.roi
            merger.add(block_stats(request.result()[0, ..., 0], source.read(roi)[0], roi.start[1:]))
        yield frame, merger.result()
    finally:
        for request in pending:
            request.cancel()


def stream_tables(gateway: Gateway, region: Roi, settings: ThresholdSettings, priority: int,
                  snapshot: PipelineSnapshot | None = None, ahead: int = 2,
                  check: Callable[[], None] | None = None) -> Iterator[np.ndarray]:
    """The table rows of each time step of ``region`` in order, ``object_id`` counted over all of them from 0
    (see :func:`stream_stats` for the memory)."""
    rows = 0
    for t, stats in stream_stats(gateway, region, settings, priority, snapshot, ahead, check):
        table = feature_table(stats, t, rows, is_volumetric(gateway.source))
        rows += len(table)
        yield table


def frame_stats(gateway: Gateway, region: Roi, settings: ThresholdSettings, priority: int,
                snapshot: PipelineSnapshot | None = None, check: Callable[[], None] | None = None,
                ahead: int = 2) -> ObjectStats:
    """The statistics of the objects in ``region`` (one time step), in bounded memory (see :func:`stream_stats`)."""
    return next(stream_stats(gateway, region, settings, priority, snapshot, ahead, check))[1]


def frame_rows(gateway: Gateway, region: Roi, settings: ThresholdSettings, priority: int,
               snapshot: PipelineSnapshot | None = None, check: Callable[[], None] | None = None,
               ahead: int = 2) -> np.ndarray:
    """The table rows of ``region``'s time step, ``object_id`` counted from 0."""
    stats = frame_stats(gateway, region, settings, priority, snapshot, check, ahead)
    return feature_table(stats, region.start[0], 0, is_volumetric(gateway.source))


def is_volumetric(source: DataSource) -> bool:
    """Whether the table has z columns (the image has more than one z slice)."""
    return source.spatial_shape[1] > 1


class FrameTables:
    """The table rows of frames whose labels arrive block by block (``--prediction_maps``): each block is
    measured over the same box of ``raw`` and merged into its frame's statistics; a frame's rows are made when
    it ends. Holds the per-object numbers, never a frame."""

    def __init__(self, raw: DataSource):
        self.raw = raw
        self.tables: list[np.ndarray] = []
        self._merger = StatsMerger(raw.channels, raw.dtype)

    def add_block(self, t: int, start: tuple[int, int, int], labels: np.ndarray) -> None:
        """Measure the ``(z, y, x)`` block of frame ``t``'s final labels that starts at ``start``."""
        stop = tuple(a + n for a, n in zip(start, labels.shape))
        self._merger.add(block_stats(labels, self.raw.read(Roi((t, *start), (t + 1, *stop)))[0], start))

    def end_frame(self, t: int) -> None:
        """Frame ``t`` has no more blocks: its rows, ``object_id`` counted on from the frames before."""
        rows = sum(len(table) for table in self.tables)
        self.tables.append(feature_table(self._merger.result(), t, rows, is_volumetric(self.raw)))
        self._merger = StatsMerger(self.raw.channels, self.raw.dtype)


def csv_text(table: np.ndarray, header: bool = True) -> str:
    """The rows as ilastik writes its CSV table: names joined by commas, then each row's values."""
    lines = [",".join(table.dtype.names)] if header else []
    lines += [",".join(map(str, row)) for row in table]
    return "".join(line + "\n" for line in lines)


def json_rows(table: np.ndarray) -> dict:
    """The table as ``{"columns": [...], "rows": [[...], ...]}``; numbers as the CSV writes them."""
    rows = [[int(v) if isinstance(v, np.integer) else float(str(v)) for v in row] for row in table]
    return {"columns": list(table.dtype.names), "rows": rows}


def check_table_format(fmt: str) -> None:
    """UserError unless ``fmt`` is a format a table can be written in."""
    if fmt not in TABLE_FORMATS:
        raise UserError(f"--output_format {fmt}: {OBJECT_FEATURES} are a table, written as "
                        f"{' or '.join(TABLE_FORMATS)}")


def write_table(path: str, fmt: str, tables: list[np.ndarray]) -> None:
    """Write the frames' rows as one table to ``path`` (via a partial file: no half-written table is left)."""
    check_table_format(fmt)
    partial = path + ".partial"
    try:
        if fmt == "csv":
            with open(partial, "w", newline="") as out:
                for index, table in enumerate(tables):
                    out.write(csv_text(table, header=index == 0))
        else:
            import h5py

            with h5py.File(partial, "w", libver="earliest") as out:
                out.create_dataset(TABLE_DATASET, data=np.concatenate(tables))
        os.replace(partial, path)
    except OSError as exc:
        raise UserError(f"{path}: cannot write the table here ({exc.strerror or exc})") from None
    finally:
        with contextlib.suppress(OSError):
            os.remove(partial)


def block_bytes(gateway: Gateway) -> int:
    """Memory one object block of labels and raw data (and the raw block's copy) takes, for bounded-memory
    callers of :func:`stream_stats` (which holds ``ahead`` of them)."""
    source = gateway.source
    voxels = math.prod(object_block_shape(gateway))
    return voxels * (np.dtype(np.uint32).itemsize + 2 * source.channels * source.dtype.itemsize)
