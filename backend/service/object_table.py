"""The Object Features table of a lane: features of the Objects layer's objects over the raw data, frame by
frame, and the table written as ilastik's Export Table writes it (CSV with a header line, or HDF5 with one
compound dataset ``table``)."""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np

from backend.compute.geometry import BlockGrid, Roi
from backend.compute.object_features import ObjectStats, block_stats, empty_stats, feature_table, merge_stats
from backend.errors import UserError
from backend.service.gateway import Gateway
from backend.service.objects import frame_roi

OBJECT_FEATURES = "Object Features"
TABLE_FORMATS = {"csv": ".csv", "hdf5": ".h5"}
TABLE_DATASET = "table"  # ilastik's ExportFile writes its table under this name


def region_stats(gateway: Gateway, labels: np.ndarray, region: Roi,
                 block_shape: tuple[int, int, int, int]) -> ObjectStats:
    """Statistics of the objects in ``region`` (one time step) from the frame's ``(1, z, y, x, 1)`` labels and
    the lane's raw data, read and reduced one block at a time; coordinates are the frame's."""
    source = gateway.source
    frame = frame_roi(gateway, region.start[0])
    grid = BlockGrid(source.spatial_shape, block_shape, (0, 0, 0, 0))
    stats = empty_stats(source.channels, source.dtype)
    for block in grid.blocks_in(region):
        roi = block.roi.intersect(region)
        part = block_stats(labels[roi.relative_to(frame)][0, ..., 0], source.read(roi)[0], roi.start[1:])
        stats = merge_stats([stats, part])
    return stats


def frame_rows(gateway: Gateway, labels: np.ndarray, region: Roi, block_shape: tuple[int, int, int, int],
               first_row: int) -> np.ndarray:
    """The table rows of ``region``'s time step, ``object_id`` counted from ``first_row``."""
    volumetric = gateway.source.spatial_shape[1] > 1
    return feature_table(region_stats(gateway, labels, region, block_shape), region.start[0], first_row, volumetric)


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


def frame_labels_bytes(gateway: Gateway) -> int:
    """Memory a frame's labels take (for bounded-memory callers)."""
    return math.prod(gateway.source.spatial_shape[1:]) * np.dtype(np.uint32).itemsize
