"""Block-wise writers for export results: HDF5, .npy, TIFF and zarr, in the raw data's axis order.

Each writer fills a file under a temporary name and renames it when :meth:`commit` is called, so an
interrupted export never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time

import numpy as np

from backend.compute.geometry import Roi
from backend.errors import UserError
from backend.io.sources.base import CANONICAL

FORMATS = {"hdf5": ".h5", "npy": ".npy", "tif": ".tif", "zarr": ".zarr"}


def output_axes(raw_axes: str) -> str:
    """The export's axes: the raw data's axes with the channel axis last (as ilastik writes)."""
    return raw_axes.replace("c", "") + "c"


def axistags_json(axes: str) -> str:
    """vigra-style axistags for ``axes``, so ilastik and our reader know the axis order."""
    flags = {"t": 8, "c": 1}
    return json.dumps({"axes": [{"key": a, "typeFlags": flags.get(a, 2), "resolution": 0, "description": ""}
                                for a in axes]})


class BlockWriter:
    """Writes ``(t, z, y, x, c)`` blocks of the region ``region`` (tzyx) into an array-like target."""

    def __init__(self, path: str, fmt: str, axes: str, region: Roi, channels: int, dtype: np.dtype,
                 block_shape: tuple[int, ...], internal_path: str = "exported_data"):
        if fmt not in FORMATS:
            raise UserError(f"unknown output format '{fmt}' (choose one of {', '.join(FORMATS)})")
        self.path, self.fmt, self.axes, self.region = path, fmt, axes, region
        self.channels, self.dtype = channels, np.dtype(dtype)
        self.partial = _partial_name(path)
        sizes = dict(zip("tzyx", region.shape), c=channels)
        shape = tuple(sizes[a] for a in axes)
        block = dict(zip("tzyx", block_shape), c=channels)
        chunks = tuple(min(block[a], sizes[a]) for a in axes)
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise UserError(f"{path}: the output folder {parent} does not exist")
        self._file, self.array = None, None
        try:
            _remove(self.partial)
            open(self.partial, "wb").close()  # an unwritable folder says so, not that it has no room
            _remove(self.partial)
            _check_space(path, parent, fmt, math.prod(shape) * self.dtype.itemsize)
            self.array = self._create(shape, np.dtype(dtype), chunks, internal_path)
        except (OSError, UserError) as exc:
            with contextlib.suppress(OSError):
                self.abort()
            if isinstance(exc, UserError):
                raise
            raise UserError(f"{path}: cannot write the output here ({exc.strerror or exc})") from None
        self._order = [CANONICAL.index(a) for a in axes] + [i for i, a in enumerate(CANONICAL) if a not in axes]

    def _create(self, shape, dtype, chunks, internal_path):
        if self.fmt == "hdf5":
            import h5py

            self._file = h5py.File(self.partial, "w")
            ds = self._file.create_dataset(internal_path, shape=shape, dtype=dtype, chunks=chunks)
            ds.attrs["axistags"] = axistags_json(self.axes)
            return ds
        if self.fmt == "npy":
            return np.lib.format.open_memmap(self.partial, mode="w+", dtype=dtype, shape=shape)
        if self.fmt == "tif":
            import tifffile

            return tifffile.memmap(self.partial, shape=shape, dtype=dtype,
                                   metadata={"axes": self.axes.upper()})
        import zarr

        array = zarr.open_array(self.partial, mode="w", shape=shape, chunks=chunks, dtype=dtype)
        array.attrs["axes"] = list(self.axes)
        return array

    def write(self, roi: Roi, block: np.ndarray) -> None:
        """Store the result of a tzyx ``roi`` (global coordinates) given as (t, z, y, x, c)."""
        local = roi.shift(tuple(-s for s in self.region.start))
        bounds = dict(zip("tzyx", local.slices()), c=slice(None))
        native = block.transpose(self._order).reshape([block.shape[i] for i in self._order[: len(self.axes)]])
        self.array[tuple(bounds[a] for a in self.axes)] = native

    def commit(self) -> None:
        """Flush, close and move the finished file to its final name."""
        self._close()
        _remove(self.path)
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Close and delete the unfinished file."""
        self._close()
        _remove(self.partial)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif hasattr(self.array, "flush"):
            self.array.flush()
        self.array = None


def _check_space(path: str, parent: str, fmt: str, size: int) -> None:
    """UserError, before anything is computed, if an uncompressed output cannot fit in its folder's free space
    (zarr compresses its chunks, so its size is not known in advance)."""
    if fmt == "zarr":
        return
    free = shutil.disk_usage(parent).free
    if size > free:
        raise UserError(f"{path}: the output needs {_size_text(size)} but only {_size_text(free)} are free in "
                        f"{parent} (export a smaller region, or to zarr, which compresses)")


def _size_text(size: int) -> str:
    return f"{size / 1e9:,.1f} GB" if size >= 1e9 else f"{size / 1e6:,.1f} MB"


def _partial_name(path: str) -> str:
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".{tail}.partial")


def _remove(path: str, settle_s: float = 0.2, limit_s: float = 5.0) -> None:
    """Delete the file or folder ``path``. A folder is removed again until it stays gone for ``settle_s``: an
    interrupted zarr write goes on briefly on zarr's own I/O thread, which fills (or re-creates) the folder
    while it is being removed ("Directory not empty"); after ``limit_s`` the last error is raised."""
    if not os.path.isdir(path):
        if os.path.exists(path):
            os.remove(path)
        return
    deadline = time.monotonic() + limit_s
    while True:
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            pass
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(settle_s)
        if not os.path.exists(path):
            return
