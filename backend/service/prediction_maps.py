"""Objects from a given probability map, as ilastik's "Object Classification (from prediction image)" workflow
thresholds it: the map is read frame by frame, brought to float32 in [0, 1] and labelled with the project's
thresholding settings; no classifier is involved.

The input step follows lazyflow's ``OpThresholdTwoLevels``: convert to float32, then rescale from the map's data
range to [0, 1] unless that range is already [0, 1]. The range is the map's ``drange`` attribute (HDF5, zarr, N5)
if it has one; else the full range of an integer pixel type (uint8: 0 to 255); a float map without one is taken
as it is.

With the raw data given (``--raw_data``, paired with the maps in order), a map must have the raw data's (t, z, y, x)
shape, and the outputs are named after the raw data, as ilastik's export names them from its raw data role. The
Object Features table (as ilastik's "from prediction image" workflow, computed on the raw data) is measured from
the same blocks of final labels as they are written, each over the same box of the raw data.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from backend.compute.geometry import Roi
from backend.compute.object_blocks import default_block_shape
from backend.compute.pipeline import split_kind
from backend.compute.threshold import ThresholdSettings, used_channels
from backend.errors import DataError, UserError
from backend.io.dataset import open_lane
from backend.io.project import Project
from backend.io.sources import DataSource, open_source, split_internal_path
from backend.io.writers import BlockWriter, output_axes
from backend.service.blockwise_objects import label_frame_blockwise
from backend.service.export import ExportOptions, ExportResult, check_internal_path, output_path
from backend.service.object_table import OBJECT_FEATURES, FrameTables, write_table
from backend.service.objects import OBJECTS

Box = tuple[int, int, int]
ReadBox = Callable[[Box, Box], np.ndarray]
WriteBox = Callable[[Box, np.ndarray], None]


@dataclass(frozen=True)
class MapInput:
    """One lane of a ``--prediction_maps`` run: the probability map and, when given, the raw data it was predicted
    from (the outputs are named after it; its intensities are there for measurements per object)."""

    map: DataSource
    raw: DataSource | None = None

    @property
    def named_after(self) -> DataSource:
        """The image whose ``{nickname}`` and ``{dataset_dir}`` the outputs take: the raw data when given."""
        return self.raw if self.raw is not None else self.map

    def close(self) -> None:
        """Release the files the sources hold open (HDF5)."""
        for source in (self.map, self.raw):
            _close(source)


def open_input(map_spec: str, map_axes: str | None, raw_spec: str | None = None, raw_axes: str | None = None,
               project: Project | None = None, lane: int = 0) -> MapInput:
    """The map ``map_spec`` and, if given, its raw data ``raw_spec`` (read as the project's lane ``lane`` is, its
    axes fitted to the lane's); UserError naming both if their (t, z, y, x) shapes differ."""
    source = open_source(map_spec, map_axes)
    try:
        check_not_labels(source)
    except UserError:
        _close(source)
        raise
    if raw_spec is None:
        return MapInput(source)
    try:
        raw = (open_lane(project, lane, raw_spec, raw_axes) if project is not None and project.lanes
               else open_source(raw_spec, raw_axes))
    except BaseException:
        _close(source)
        raise
    inputs = MapInput(source, raw)
    if raw.spatial_shape != source.spatial_shape:
        inputs.close()
        raise UserError(f"{source.description}: its shape (t, z, y, x) {source.spatial_shape} differs from that of "
                        f"its raw data {raw.description} {raw.spatial_shape} (the maps and the raw data are paired "
                        "in the order given)")
    return inputs


LABEL_TYPES = ("int32", "uint32", "int64", "uint64")


def check_not_labels(source: DataSource) -> None:
    """UserError naming the map if it has a 32 or 64-bit integer type and no ``drange``: such a file is a label
    image (an earlier Objects export picked up by a glob, say), not probabilities."""
    if source.dtype.name in LABEL_TYPES and declared_range(source) is None:
        raise UserError(f"{source.description}: looks like a label image, not probabilities: its pixel type is "
                        f"{source.dtype.name} and it has no drange attribute; give it a drange attribute if it is "
                        "a probability map")


def _close(source: DataSource | None) -> None:
    release = getattr(source, "close", None)  # an HDF5 source holds its file open
    if release is not None:
        release()


MAP_SOURCES = (OBJECTS, OBJECT_FEATURES)
NEEDS_RAW = f"{OBJECT_FEATURES} need the raw data: give --raw_data (paired with the maps in order)"


def check_map_sources(kind: str, pattern: str, with_raw: bool) -> tuple[str, ...]:
    """The sources a ``--prediction_maps`` run writes (Objects, Object Features or both), checked: UserError for
    another source, a repeat, two without ``{result_type}`` in the name, Object Features without raw data."""
    kinds = split_kind(kind)
    if not set(kinds) <= set(MAP_SOURCES) or len(set(kinds)) < len(kinds):
        raise UserError(f"--prediction_maps exports {OBJECTS} and {OBJECT_FEATURES} only (--export_source, each "
                        "at most once): the maps are thresholded, not predicted")
    if len(kinds) > 1 and "{result_type}" not in pattern:
        raise UserError(f"--output_filename_format '{pattern}': {OBJECTS} and {OBJECT_FEATURES} need "
                        "{result_type} in the name, so that each gets its own file")
    if OBJECT_FEATURES in kinds and not with_raw:
        raise UserError(NEEDS_RAW)
    return kinds


def map_outputs(inputs: MapInput, nickname: str, options: ExportOptions) -> dict[str, str]:
    """The output of each source of ``options.kind`` (``output_path`` of the image it is named after); UserError
    as :func:`check_map_sources` says, or if an output would overwrite the map itself."""
    outputs = {}
    for kind in check_map_sources(options.kind, options.filename_pattern, inputs.raw is not None):
        try:
            path = outputs[kind] = output_path(options.filename_pattern, options.fmt, inputs.named_after, nickname,
                                               kind)
        except UserError as exc:  # named after the map itself: the "raw data" output_path speaks of is the map
            raise UserError(str(exc).replace("its own raw data", "its own probability map")) from None
        if inputs.raw is not None:
            files = inputs.map.description.split(os.pathsep)
            if os.path.realpath(path) in {os.path.realpath(split_internal_path(f)[0]) for f in files}:
                raise UserError(f"{path}: the export would overwrite its probability map; choose another "
                                "--output_filename_format")
    return outputs


def label_frame(read_box: ReadBox, frame_shape: Box, settings: ThresholdSettings, write_box: WriteBox,
                progress: Callable[[float], None] | None = None, threads: int = 2) -> int:
    """Label the objects of one (z, y, x) frame with ilastik's IDs and return the highest object ID.

    ``read_box(start, stop)`` gives the float32 ``(z, y, x, channels)`` probabilities of a box, already in
    [0, 1]; ``write_box(start, labels)`` receives the ``(z, y, x)`` labels of a box, uint32, or uint64 once IDs go
    beyond 2**32 - 1 (the output is widened then); ``progress`` is told the share of the frame done (0 to 1).
    The frame is labelled block by block on ``threads`` threads, in memory bounded by blocks, not by the frame.
    """
    def ticks(done: int, total: int) -> None:
        if progress is not None:
            progress(done / total)

    result = label_frame_blockwise(read_box, tuple(frame_shape), settings, write_box, threads=threads,
                                   progress=ticks)
    return result.max_id


def declared_range(source: DataSource) -> tuple[float, float] | None:
    """The ``drange`` attribute of a map's dataset (HDF5, zarr, N5), None if it has none; DataError naming the
    file if it is not two increasing finite numbers."""
    value = _drange_attribute(source)
    if value is None:
        return None
    try:
        low, high = (float(v) for v in np.asarray(value).ravel())
    except (TypeError, ValueError):
        low = high = float("nan")
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise DataError(f"{source.description}: its drange attribute {value!r} is not a range (expected two "
                        "numbers, the lower first)")
    return low, high


def _drange_attribute(source: DataSource):
    from backend.io.sources.hdf5 import Hdf5Source
    from backend.io.sources.n5 import N5Source
    from backend.io.sources.zarr_source import ZarrSource

    if isinstance(source, Hdf5Source):
        import h5py

        with h5py.File(source.path, "r") as f:
            return f[source.internal].attrs.get("drange")
    if isinstance(source, ZarrSource):
        return source.array.attrs.get("drange")
    if isinstance(source, N5Source):
        with open(os.path.join(source.path, "attributes.json")) as f:
            return json.load(f).get("drange")
    return None


def data_range(source: DataSource) -> tuple[float, float] | None:
    """The range that maps to [0, 1]: the declared ``drange``, else an integer type's full range; None for a float
    map without ``drange`` (used as it is)."""
    declared = declared_range(source)
    if declared is not None:
        return declared
    if np.issubdtype(source.dtype, np.integer):
        info = np.iinfo(source.dtype)
        return float(info.min), float(info.max)
    return None


def normalize(values: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """``values`` as float32, rescaled from ``value_range`` to [0, 1] unless it is None or already (0, 1)."""
    out = values.astype(np.float32)
    if value_range is None or value_range == (0.0, 1.0):
        return out
    low, high = value_range
    out -= np.float32(low)
    out /= np.float32(high - low)
    return out


def check_map_channels(source: DataSource, settings: ThresholdSettings) -> None:
    """UserError naming the map if a channel the thresholding reads (the channel; the core channel in hysteresis
    mode) is not one of its channels."""
    for name, index in used_channels(settings):
        if index >= source.channels:
            raise UserError(f"{source.description}: the thresholding {name} is {index} but this map has "
                            f"{source.channels} channel{'s' if source.channels != 1 else ''} (0 to "
                            f"{source.channels - 1}); choose one with --threshold {name.replace(' ', '_')}=N")


def export_objects(inputs: MapInput, nickname: str, settings: ThresholdSettings, options: ExportOptions,
                   threads: int = 2, frame_done: Callable[[int, int], None] | None = None) -> tuple[ExportResult, int]:
    """Threshold every frame of the map of ``inputs`` and write what ``options.kind`` asks for: the labels
    ``(t, z, y, x, 1)`` as the Objects export does (uint32, uint64 if an ID needs it, the highest ID recorded as
    the attribute ``max_object_id``) and/or the Object Features table measured on the raw data. Returns where and
    how long, and the highest object ID of all frames. Partial outputs are removed on any failure or
    interruption. Each frame is labelled block by block on ``threads`` threads; the table is measured from the
    same blocks, so neither holds a frame. ``frame_done(t, highest)`` is told each frame's highest ID (0: no
    object)."""
    source = inputs.map
    check_map_channels(source, settings)
    outputs = map_outputs(inputs, nickname, options)
    value_range = data_range(source)
    frames, *frame_shape = source.spatial_shape
    region = Roi.from_shape(source.spatial_shape)
    writer = _labels_writer(inputs, options, outputs[OBJECTS]) if OBJECTS in outputs else None
    tables = FrameTables(inputs.raw) if OBJECT_FEATURES in outputs else None
    started = time.perf_counter()
    highest = 0
    bar = tqdm(total=frames, unit="frame", desc=" and ".join(outputs), file=sys.stderr,
               disable=not options.progress, dynamic_ncols=True)
    try:
        for t in range(frames):
            read_box, write_box = _frame_boxes(source, t, value_range, writer, tables)

            def advance(share: float, t: int = t) -> None:
                bar.update(int(t + share) - bar.n)  # whole frames on the bar

            frame_highest = label_frame(read_box, tuple(frame_shape), settings, write_box, advance, threads)
            highest = max(highest, frame_highest)
            if frame_done is not None:
                frame_done(t, frame_highest)
            if tables is not None:
                tables.end_frame(t)
        if tables is not None:
            write_table(outputs[OBJECT_FEATURES], options.fmt, tables.tables)
        if writer is not None:
            writer.describe(max_object_id=highest)
            writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
    paths = tuple(outputs.values())
    return ExportResult(paths[0], frames, time.perf_counter() - started, region.size, paths), highest


def _labels_writer(inputs: MapInput, options: ExportOptions, path: str) -> BlockWriter:
    """The Objects output of ``inputs``: uint32 (widened if an ID needs it), chunks aligned with the blocks."""
    source = inputs.map
    frame_shape = tuple(source.spatial_shape[1:])
    voxel_size = source.voxel_size or (inputs.raw.voxel_size if inputs.raw is not None else None)
    return BlockWriter(path, options.fmt, output_axes(source.axes), Roi.from_shape(source.spatial_shape), 1,
                       np.dtype(np.uint32), (1, *default_block_shape(frame_shape)),
                       check_internal_path(options.internal_path), voxel_size)


def _frame_boxes(source: DataSource, t: int, value_range: tuple[float, float] | None, writer: BlockWriter | None,
                 tables: FrameTables | None) -> tuple[ReadBox, WriteBox]:
    """``label_frame``'s access to frame ``t``: normalized boxes of the map; labels into the writer and measured
    into the tables (whichever are given)."""

    def read_box(start: Box, stop: Box) -> np.ndarray:
        return normalize(source.read(Roi((t, *start), (t + 1, *stop)))[0], value_range)

    def write_box(start: Box, labels: np.ndarray) -> None:
        if tables is not None:
            tables.add_block(t, start, labels)
        if writer is None:
            return
        if labels.dtype != writer.dtype and int(labels.max(initial=0)) > np.iinfo(writer.dtype).max:
            writer.widen(np.dtype(np.uint64))
        stop = tuple(s + n for s, n in zip(start, labels.shape))
        writer.write(Roi((t, *start), (t + 1, *stop)), labels.astype(writer.dtype, copy=False)[None, ..., None])

    return read_box, write_box
