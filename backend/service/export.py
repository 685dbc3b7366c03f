"""Headless export: stream every block (or frame, for Objects) of a region through the gateway into a file."""

from __future__ import annotations

import os
import string
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from backend.compute.geometry import Roi
from backend.compute.pipeline import RESULT_KINDS, split_kind
from backend.compute.threshold import ThresholdSettings
from backend.errors import UserError
from backend.io.sources import DataSource, split_internal_path
from backend.io.writers import FORMATS, BlockWriter, output_axes
from backend.service.gateway import BATCH, Gateway
from backend.service.object_table import OBJECT_FEATURES, TABLE_FORMATS, check_table_format, stream_tables, write_table
from backend.service.objects import OBJECTS, frame_roi, object_blocks, request_objects
from backend.service.shared_export import SharedCounts, export_shared, export_shared_h5, slab_region
from backend.service.snapshot import PipelineSnapshot

EXPORT_SOURCES = (*RESULT_KINDS, OBJECTS, OBJECT_FEATURES)
OUTPUT_FORMATS = (*FORMATS, "csv")  # csv: tables (Object Features) only


def formats_for(kind: str) -> tuple[str, ...]:
    """The output formats ``kind`` can be written in: csv or hdf5 for the Object Features table, the image
    formats for every other source."""
    return tuple(TABLE_FORMATS) if kind == OBJECT_FEATURES else tuple(FORMATS)


def piece_unit(kind: str) -> str:
    """What an export of ``kind`` counts as its pieces: frames for Objects and Object Features, else blocks."""
    return "frame" if kind in (OBJECTS, OBJECT_FEATURES) else "block"


@dataclass(frozen=True)
class ExportOptions:
    """What to export, where, and how to cut it into blocks."""

    kind: str = "Probabilities"
    fmt: str = "hdf5"
    filename_pattern: str = "{dataset_dir}/{nickname}_{result_type}"
    internal_path: str = "exported_data"
    region: Roi | None = None  # tzyx; None = whole image
    block_shape: tuple[int, int, int, int] | None = None  # tzyx; None = default_block_shape()
    progress: bool = True
    threshold: ThresholdSettings | None = None  # for Objects; None = ilastik's defaults
    shared_filesystem: bool = False  # the workers read their raw data and write their chunks themselves (zarr)
    slab: tuple[int, int] | None = None  # with shared_filesystem: only the K-th of N slabs (K, N)


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and what it took."""

    path: str
    blocks: int
    seconds: float
    voxels: int
    paths: tuple[str, ...] = ()  # every file, when one run wrote several sources
    highest_object_id: int | None = None  # Objects: the highest ID written (0: no object)
    labels_dtype: np.dtype | None = None  # Objects: the output's dtype (uint64 when a frame's IDs needed it)
    frames_with_objects: int | None = None  # Objects: how many of the frames written hold an object
    shared: SharedCounts | None = None  # --shared-filesystem: what the workers wrote and what was there already


def default_block_shape(spatial_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Blocks large enough to amortise the halo and small enough to keep memory bounded."""
    if spatial_shape[1] == 1:
        return (1, 1, 512, 512)
    return (1, 64, 128, 128)


PLACEHOLDERS = ("dataset_dir", "nickname", "result_type")
_EXTENSIONS = {".h5": "hdf5", ".hdf5": "hdf5", ".npy": "npy", ".tif": "tif", ".tiff": "tif", ".zarr": "zarr",
               ".csv": "csv"}


def output_path(pattern: str, fmt: str, source: DataSource, nickname: str, kind: str) -> str:
    """Fill ``{dataset_dir}``, ``{nickname}`` and ``{result_type}`` and add the format's extension.

    UserError for other placeholders (only plain names are filled in), an extension of another format, a
    format the source cannot be written in, and an output that would overwrite the raw data it is computed from.
    """
    if kind == OBJECT_FEATURES:
        check_table_format(fmt)
    elif fmt == "csv":
        raise UserError(f"--output_format csv is for {OBJECT_FEATURES} (a table); images are written as "
                        f"{', '.join(FORMATS)}")
    file_path, _ = split_internal_path(source.description.split(os.pathsep)[0])
    dataset_dir = os.path.dirname(os.path.abspath(file_path))
    try:
        fields = [field for _, field, spec, conversion in string.Formatter().parse(pattern) if field is not None
                  and (field not in PLACEHOLDERS or spec or conversion)]
    except ValueError as exc:
        raise UserError(f"--output_filename_format '{pattern}': {exc}") from None
    if fields:
        raise UserError(f"--output_filename_format '{pattern}': unknown placeholder {{{fields[0]}}} (use "
                        f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)})")
    path = pattern.format(dataset_dir=dataset_dir, nickname=nickname, result_type=kind.replace(" ", "_"))
    ext = os.path.splitext(path)[1].lower()
    if ext in _EXTENSIONS and _EXTENSIONS[ext] != fmt:
        raise UserError(f"--output_filename_format '{pattern}' ends in {ext} but --output_format is {fmt}")
    path = path if ext in _EXTENSIONS else path + {**FORMATS, **TABLE_FORMATS}[fmt]
    inputs = {os.path.realpath(p) for p in source.description.split(os.pathsep)}
    inputs |= {os.path.realpath(split_internal_path(p)[0]) for p in source.description.split(os.pathsep)}
    if os.path.realpath(path) in inputs:
        raise UserError(f"{path}: the export would overwrite its own raw data; choose another "
                        "--output_filename_format")
    return path


def check_internal_path(internal_path: str) -> str:
    """A dataset name inside HDF5 output: not empty, not the root, no '.' or '..' parts."""
    parts = [p for p in internal_path.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise UserError(f"--output_internal_path '{internal_path}': expected a dataset name such as exported_data")
    return "/".join(parts)


class ExportCancelled(Exception):
    """The export was stopped before it finished; its partial output was removed."""


def run_export(gateway: Gateway, nickname: str, options: ExportOptions, max_in_flight: int = 8,
               on_progress: Callable[[int, int], None] | None = None,
               cancel: threading.Event | None = None) -> ExportResult:
    """Compute ``options.kind`` over the region through the gateway and write it; returns where and how long.

    ``on_progress(done, total)`` is called with 0 once the number of pieces is known, then after each written
    piece; setting ``cancel`` stops the
    export with :class:`ExportCancelled` and removes the partial output. With ``options.shared_filesystem`` the
    workers write a zarr output themselves (:mod:`backend.service.shared_export`), which an interruption leaves.
    """
    kinds = check_sources(split_kind(options.kind), options.filename_pattern)
    if options.shared_filesystem:
        return _export_shared(gateway, nickname, options, max_in_flight, on_progress, cancel)
    if options.kind == OBJECT_FEATURES:
        return _export_table(gateway, nickname, options, max_in_flight, on_progress, cancel)
    snapshot = gateway.snapshot  # one classifier for the whole export, even while the window trains
    source, pipeline = gateway.source, snapshot.pipeline
    region = options.region or Roi.from_shape(source.spatial_shape)
    objects = options.kind == OBJECTS
    paths = [output_path(options.filename_pattern, options.fmt, source, nickname, kind) for kind in kinds]
    writers = []
    try:
        for kind, path in zip(kinds, paths):
            channels, dtype = (1, np.dtype(np.uint32)) if objects else (pipeline.channels(kind), pipeline.dtype(kind))
            writers.append(BlockWriter(path, options.fmt, output_axes(source.axes), region, channels, dtype,
                                       gateway.config.block_shape, check_internal_path(options.internal_path),
                                       source.voxel_size))
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    writer = SplitWriter(writers, track_highest=objects)
    started = time.perf_counter()
    try:  # from here on an interruption (SIGTERM, Ctrl-C) removes the partial output
        total, pieces = _pieces(gateway, snapshot, options, region)
        bar = tqdm(total=total, unit="frame" if objects else "block", desc=options.kind, file=sys.stderr,
                   disable=not options.progress, dynamic_ncols=True)
        progress = _Progress(bar, total, on_progress, cancel)
        try:
            progress.update(0)
            _stream(gateway, snapshot, options, pieces, writer, progress, max_in_flight, region)
        finally:
            bar.close()
        if objects:  # as the --prediction_maps Objects output records it
            writers[0].describe(max_object_id=writer.highest)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return ExportResult(paths[0], total, time.perf_counter() - started, region.size, tuple(paths),
                        writer.highest if objects else None, writers[0].dtype if objects else None,
                        len(writer.frames_with_objects) if objects else None)


def _export_table(gateway: Gateway, nickname: str, options: ExportOptions, max_in_flight: int,
                  on_progress: Callable[[int, int], None] | None, cancel: threading.Event | None) -> ExportResult:
    """The Object Features table of the region: the objects' labels asked for block by block (up to
    ``max_in_flight`` blocks at once), their features over the raw data merged per frame, one table file at the end."""
    snapshot, source = gateway.snapshot, gateway.source
    region = options.region or Roi.from_shape(source.spatial_shape)
    path = output_path(options.filename_pattern, options.fmt, source, nickname, OBJECT_FEATURES)
    settings = options.threshold or ThresholdSettings()
    frames = region.shape[0]
    tables: list[np.ndarray] = []
    started = time.perf_counter()
    bar = tqdm(total=frames, unit="frame", desc=OBJECT_FEATURES, file=sys.stderr, disable=not options.progress,
               dynamic_ncols=True)
    progress = _Progress(bar, frames, on_progress, cancel)
    try:
        progress.update(0)
        for table in stream_tables(gateway, region, settings, BATCH, snapshot, max_in_flight, progress.check):
            tables.append(table)
            progress.update(1)
            progress.check()
        write_table(path, options.fmt, tables)
    finally:
        bar.close()
    return ExportResult(path, frames, time.perf_counter() - started, region.size, (path,))


def _export_shared(gateway: Gateway, nickname: str, options: ExportOptions, max_in_flight: int,
                   on_progress: Callable[[int, int], None] | None, cancel: threading.Event | None) -> ExportResult:
    """The export written by the workers straight into a zarr output, or sent by them to one HDF5 writer process
    (:mod:`backend.service.shared_export`)."""
    if options.fmt not in ("zarr", "hdf5") or (options.fmt == "hdf5" and options.slab):
        raise UserError("--shared-filesystem needs --output_format zarr (the workers write its chunks themselves) "
                        "or hdf5 (without --slab: one writer process the workers send their blocks to)")
    # absolute: the workers write there from their own working folders
    path = os.path.abspath(output_path(options.filename_pattern, options.fmt, gateway.source, nickname, options.kind))
    region = options.region or Roi.from_shape(gateway.source.spatial_shape)
    region = slab_region(region, gateway.snapshot.grid(gateway.config.block_shape), options.slab) \
        if options.slab else region
    total = gateway.snapshot.grid(gateway.config.block_shape).count_in(region)
    bar = tqdm(total=total, unit="block", desc=options.kind, file=sys.stderr, disable=not options.progress,
               dynamic_ncols=True)
    progress = _Progress(bar, total, on_progress, cancel)
    try:
        progress.update(0)
        if options.fmt == "hdf5":
            counts = export_shared_h5(gateway, path, options.kind, options.region,
                                      check_internal_path(options.internal_path), max_in_flight, progress.update,
                                      progress.check)
        else:
            counts = export_shared(gateway, path, options.kind, options.region, options.slab, max_in_flight,
                                   progress.update, progress.check)
    finally:
        bar.close()
    return ExportResult(path, counts.blocks, counts.seconds, counts.voxels, (path,), shared=counts)


def _pieces(gateway: Gateway, snapshot: PipelineSnapshot, options: ExportOptions,
            region: Roi) -> tuple[int, Callable[[bool], Iterator[Roi]]]:
    """How many pieces (blocks, or frames for Objects) the region has, and a way to go through them one at a
    time, last first if asked: a declared-huge image is never listed."""
    if options.kind == OBJECTS:  # counted in frames, written block by block (the frame's labelling blocks)
        frames = range(region.start[0], region.stop[0])

        def blocks(reverse: bool) -> Iterator[Roi]:
            for t in reversed(frames) if reverse else frames:
                for block in object_blocks(gateway, frame_roi(gateway, t).intersect(region)):
                    yield block.intersect(region)
        return len(frames), blocks
    grid = snapshot.grid(gateway.config.block_shape)
    return grid.count_in(region), lambda reverse: (block.roi.intersect(region)
                                                   for block in grid.blocks_in(region, reverse))


def check_sources(kinds: tuple[str, ...], pattern: str) -> tuple[str, ...]:
    """The export sources of one run, checked: known, no repeats, Objects alone, one file each."""
    for kind in kinds:
        if kind not in EXPORT_SOURCES:
            raise UserError(f"unknown export source '{kind}' (choose one of {', '.join(EXPORT_SOURCES)})")
    if len(kinds) > 1:
        if len(set(kinds)) < len(kinds) or OBJECTS in kinds or OBJECT_FEATURES in kinds:
            raise UserError(f"several export sources in one run must differ and cannot include {OBJECTS} or "
                            f"{OBJECT_FEATURES} (each is exported in its own run)")
        if "{result_type}" not in pattern:
            raise UserError(f"--output_filename_format '{pattern}': several export sources need {{result_type}} "
                            "in the name, so that each gets its own file")
    return kinds


class SplitWriter:
    """Writes a combined result's channels into one writer per source (each its own dtype); with
    ``track_highest``, ``highest`` is the largest value written (an Objects export's highest ID) and
    ``frames_with_objects`` the time steps where a value above 0 was written."""

    def __init__(self, writers: list[BlockWriter], track_highest: bool = False):
        self.writers, self.track_highest, self.highest = writers, track_highest, 0
        self.frames_with_objects: set[int] = set()

    def write(self, roi: Roi, values: np.ndarray) -> None:
        """Store each writer's channels of ``values`` over ``roi``; Objects labels of a wider dtype (uint64, for a
        frame whose IDs need it) widen the output first."""
        if self.track_highest and values.size:
            per_frame = values.reshape(values.shape[0], -1).max(axis=1)  # values are (t, z, y, x, c) over roi
            self.highest = max(self.highest, int(per_frame.max()))
            self.frames_with_objects.update(t for t, top in zip(range(roi.start[0], roi.stop[0]), per_frame) if top)
        if self.track_highest and np.can_cast(self.writers[0].dtype, values.dtype, "safe") \
                and values.dtype != self.writers[0].dtype:
            self.writers[0].widen(values.dtype)
        start = 0
        for writer in self.writers:
            part = values[..., start:start + writer.channels] if len(self.writers) > 1 else values
            writer.write(roi, part.astype(writer.dtype, copy=False))
            start += writer.channels

    def commit(self) -> None:
        """Finish every file."""
        for writer in self.writers:
            writer.commit()

    def abort(self) -> None:
        """Remove every partial file."""
        for writer in self.writers:
            writer.abort()


def _request(gateway: Gateway, snapshot: PipelineSnapshot, options: ExportOptions,
             roi: Roi) -> tuple[Future, Callable[[], None]]:
    """A future of ``roi``'s values and how to cancel it."""
    if options.kind == OBJECTS:  # a piece of a frame's labels, labelled with the whole frame
        request = request_objects(gateway, roi, options.threshold or ThresholdSettings(), BATCH, snapshot=snapshot)
    else:
        request = gateway.request(options.kind, roi, BATCH, snapshot=snapshot)
    return request.future, request.cancel


class _FramesWritten:
    """How many pieces a written piece completes: one for a block, and for Objects (counted in frames) one
    when the last of its frame's blocks in the region is written."""

    def __init__(self, gateway: Gateway, options: ExportOptions, region: Roi):
        self.gateway, self.region, self.objects = gateway, region, options.kind == OBJECTS
        self.left: dict[int, int] = {}

    def __call__(self, roi: Roi) -> int:
        if not self.objects:
            return 1
        t = roi.start[0]
        if t not in self.left:
            self.left[t] = len(object_blocks(self.gateway, frame_roi(self.gateway, t).intersect(self.region)))
        self.left[t] -= 1
        return 0 if self.left[t] else 1


class _Progress:
    """The progress bar, the caller's callback and the cancel flag, updated together."""

    def __init__(self, bar, total: int, callback, cancel: threading.Event | None):
        self.bar, self.total, self.callback, self.cancel, self.done = bar, total, callback, cancel, 0

    def update(self, count: int) -> None:
        self.done += count
        self.bar.update(count)
        if self.callback is not None:
            self.callback(self.done, self.total)

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise ExportCancelled("the export was cancelled")


def _stream(gateway, snapshot, options, pieces, writer, bar, max_in_flight, region) -> None:
    """Request every piece, at most ``max_in_flight`` at a time; pieces another process is computing right
    now are put off to the end (by then they are cached), so concurrent exports share the work."""
    pending: dict[Future, tuple[Roi, Callable[[], None]]] = {}
    deferred: list[Roi] = []
    completes = _FramesWritten(gateway, options, region)
    try:
        for roi in _own_first(gateway, snapshot, options, pieces, deferred):
            bar.check()
            while len(pending) >= max_in_flight:
                _drain(pending, writer, bar, completes)
                bar.check()
            future, cancel = _request(gateway, snapshot, options, roi)
            pending[future] = (roi, cancel)
        while pending:
            _drain(pending, writer, bar, completes)
            bar.check()
    finally:
        for _, cancel in pending.values():
            cancel()


def _own_first(gateway, snapshot, options, pieces, deferred: list[Roi]):
    """The pieces, those held by another process's claim when their turn comes moved to the end; if another
    export is at the first piece already, from the last piece backwards (the two meet in the middle)."""
    if options.kind == OBJECTS:
        yield from pieces(False)
        return
    first = next(pieces(False), None)
    held = first is not None and gateway.held_elsewhere(options.kind, first, snapshot)
    for roi in pieces(held):
        if gateway.held_elsewhere(options.kind, roi, snapshot):
            deferred.append(roi)
        else:
            yield roi
    yield from deferred


def _drain(pending: dict, writer: BlockWriter, bar, completes: Callable[[Roi], int]) -> None:
    done, _ = wait(list(pending), timeout=0.5, return_when=FIRST_COMPLETED)
    for future in done:
        roi, _ = pending.pop(future)
        writer.write(roi, future.result())
        bar.update(completes(roi))
