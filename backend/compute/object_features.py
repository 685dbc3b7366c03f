"""ilastik's standard object features of labelled objects, computed block by block and merged exactly.

A block of labels and the same block of raw data give :class:`ObjectStats`: per object its pixel count,
intensity sums, minima and maxima (per channel), bounding box and coordinate sums. Partials of any blocks
merge by object ID into the statistics of the whole (sums of integer data are kept as integers, so the merge
is exact). :func:`feature_table` lays them out as ilastik 1.4's Export Table writes its rows: the column
names, the per-axis (x, y, z) and per-channel suffixes and the leading ID columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ID_COLUMNS = (("object_id", np.int64), ("timestep", np.int64), ("labelimage_oid", np.int64))
INTENSITY_FEATURES = (("Mean Intensity", "mean"), ("Minimum intensity", "minimum"),
                      ("Maximum intensity", "maximum"))
LOCATION_FEATURES = (("Bounding Box Minimum", "bbox_min"), ("Bounding Box Maximum", "bbox_stop"),
                     ("Center of the object", "center"))
SIZE_FEATURE = "Size in pixels"


@dataclass(frozen=True)
class ObjectStats:
    """Per-object partial statistics, one row per object ID in ascending order; coordinates are (z, y, x)."""

    ids: np.ndarray  # (n,) int64
    count: np.ndarray  # (n,) int64
    sums: np.ndarray  # (n, c) int64 for integer data, float64 otherwise
    minimum: np.ndarray  # (n, c) float64
    maximum: np.ndarray  # (n, c) float64
    bbox_min: np.ndarray  # (n, 3) int64, inclusive
    bbox_max: np.ndarray  # (n, 3) int64, inclusive
    coord_sums: np.ndarray  # (n, 3) int64

    @property
    def mean(self) -> np.ndarray:
        """Mean intensity per object and channel."""
        return self.sums / np.maximum(self.count, 1)[:, None]

    @property
    def center(self) -> np.ndarray:
        """Average (z, y, x) coordinate of each object's pixels."""
        return self.coord_sums / np.maximum(self.count, 1)[:, None]

    @property
    def bbox_stop(self) -> np.ndarray:
        """The bounding box's exclusive end (ilastik adds 1 to vigra's inclusive ``Coord<Maximum>``)."""
        return self.bbox_max + 1

    def row_of(self, object_id: int) -> int | None:
        """The row of ``object_id``, None if it is not here."""
        row = int(np.searchsorted(self.ids, object_id))
        return row if row < len(self.ids) and self.ids[row] == object_id else None


def _accumulator(dtype: np.dtype) -> type:
    return np.int64 if np.issubdtype(dtype, np.integer) or dtype == np.bool_ else np.float64


def empty_stats(channels: int, dtype: np.dtype) -> ObjectStats:
    """Statistics of no objects."""
    def grid(width: int, kind: type) -> np.ndarray:
        return np.zeros((0, width), kind)

    return ObjectStats(np.zeros(0, np.int64), np.zeros(0, np.int64), grid(channels, _accumulator(dtype)),
                       grid(channels, np.float64), grid(channels, np.float64), grid(3, np.int64),
                       grid(3, np.int64), grid(3, np.int64))


def _groups(sorted_ids: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in a sorted array."""
    return np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])


def block_stats(labels: np.ndarray, raw: np.ndarray, offset: tuple[int, int, int]) -> ObjectStats:
    """Partial statistics of the objects in one ``(z, y, x)`` block of labels (0 = background) over the same
    ``(z, y, x, c)`` block of raw data; ``offset`` is the block's (z, y, x) start in the frame."""
    if labels.shape != raw.shape[:3]:
        raise ValueError(f"labels {labels.shape} and raw data {raw.shape} do not cover the same block")
    flat = labels.ravel()
    foreground = np.flatnonzero(flat)
    if foreground.size == 0:
        return empty_stats(raw.shape[3], raw.dtype)
    pixels = foreground[np.argsort(flat[foreground], kind="stable")]
    ids = flat[pixels].astype(np.int64)
    starts = _groups(ids)
    values = raw.reshape(-1, raw.shape[3])[pixels]
    coords = np.stack(np.unravel_index(pixels, labels.shape), axis=1).astype(np.int64) + np.asarray(offset)
    return ObjectStats(
        ids=ids[starts],
        count=np.diff(np.r_[starts, len(pixels)]).astype(np.int64),
        sums=np.add.reduceat(values.astype(_accumulator(raw.dtype)), starts, axis=0),
        minimum=np.minimum.reduceat(values, starts, axis=0).astype(np.float64),
        maximum=np.maximum.reduceat(values, starts, axis=0).astype(np.float64),
        bbox_min=np.minimum.reduceat(coords, starts, axis=0),
        bbox_max=np.maximum.reduceat(coords, starts, axis=0),
        coord_sums=np.add.reduceat(coords, starts, axis=0),
    )


def merge_stats(parts: list[ObjectStats]) -> ObjectStats:
    """The statistics of the union of the blocks that gave ``parts`` (an object may span several)."""
    if not parts:
        raise ValueError("nothing to merge")
    ids = np.concatenate([p.ids for p in parts])
    if ids.size == 0:
        return parts[0]
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    starts = _groups(ids)

    def joined(field: str, reduce: np.ufunc) -> np.ndarray:
        return reduce.reduceat(np.concatenate([getattr(p, field) for p in parts])[order], starts, axis=0)

    return ObjectStats(ids[starts], joined("count", np.add), joined("sums", np.add),
                       joined("minimum", np.minimum), joined("maximum", np.maximum),
                       joined("bbox_min", np.minimum), joined("bbox_max", np.maximum),
                       joined("coord_sums", np.add))


class StatsMerger:
    """Gathers the partial statistics of a frame's blocks as they come and merges them by object ID; holds
    at most ``batch`` partials besides the running merge (a few numbers per object, never pixels)."""

    def __init__(self, channels: int, dtype: np.dtype, batch: int = 32):
        self._parts: list[ObjectStats] = [empty_stats(channels, dtype)]
        self._batch = batch

    def add(self, part: ObjectStats) -> None:
        """Take one block's partial statistics."""
        self._parts.append(part)
        if len(self._parts) > self._batch:
            self._parts = [merge_stats(self._parts)]

    def result(self) -> ObjectStats:
        """The statistics of every block added so far."""
        self._parts = [merge_stats(self._parts)]
        return self._parts[0]


def _suffixed(name: str, width: int) -> list[str]:
    """ilastik's column names of a feature with ``width`` values: ``name`` alone for one, else ``name_0``..."""
    return [name] if width == 1 else [f"{name}_{i}" for i in range(width)]


def table_columns(channels: int, volumetric: bool) -> list[tuple[str, np.dtype]]:
    """The table's columns and types, in order: IDs, intensities (per channel), location (x, y[, z]), size."""
    axes = 3 if volumetric else 2
    columns = [(name, np.dtype(kind)) for name, kind in ID_COLUMNS]
    for name, _ in INTENSITY_FEATURES:
        columns += [(column, np.dtype(np.float32)) for column in _suffixed(name, channels)]
    for name, _ in LOCATION_FEATURES:
        columns += [(column, np.dtype(np.float64)) for column in _suffixed(name, axes)]
    return columns + [(SIZE_FEATURE, np.dtype(np.float64))]


def feature_table(stats: ObjectStats, timestep: int, first_row: int, volumetric: bool) -> np.ndarray:
    """The objects of one time step as rows of ilastik's table (a structured array); ``object_id`` counts
    rows over the whole table from ``first_row``, ``labelimage_oid`` is the object's ID in the label image."""
    channels = stats.sums.shape[1]
    table = np.zeros(len(stats.ids), dtype=table_columns(channels, volumetric))
    table["object_id"] = np.arange(first_row, first_row + len(stats.ids))
    table["timestep"] = timestep
    table["labelimage_oid"] = stats.ids
    for name, field in INTENSITY_FEATURES:
        for column, values in zip(_suffixed(name, channels), getattr(stats, field).T):
            table[column] = values
    axes = slice(None, None, -1) if volumetric else slice(None, 0, -1)  # x, y, z from (z, y, x)
    for name, field in LOCATION_FEATURES:
        values = getattr(stats, field)[:, axes]
        for column, axis_values in zip(_suffixed(name, values.shape[1]), values.T):
            table[column] = axis_values
    table[SIZE_FEATURE] = stats.count
    return table
