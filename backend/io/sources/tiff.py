"""TIFF files (single and multi-page): memory-mapped when stored uncompressed, else read by region through
tifffile's zarr view (only the strips or tiles a region touches are decompressed, so memory stays bounded)."""

from __future__ import annotations

import os

import numpy as np
import tifffile

from backend.errors import DataError
from backend.io.sources.base import DataSource, file_identity
from backend.io.sources.damage import unreadable
from backend.io.voxel_size import from_tiff

_TIFF_AXES = {"T": "t", "Z": "z", "Y": "y", "X": "x", "C": "c", "S": "c"}


def _axes_from_tifffile(series_axes: str, shape: tuple[int, ...]) -> str | None:
    axes = ""
    for letter in series_axes.upper():
        key = _TIFF_AXES.get(letter)
        if key is None:  # unknown stacking axis (Q, I, ...): a z stack unless z is taken
            key = "z" if "z" not in axes and "Z" not in series_axes else "t"
        if key in axes:
            return None
        axes += key
    return axes if len(axes) == len(shape) else None


def _missing_data(series, file_size: int) -> str | None:
    """Why the pixels of ``series`` cannot all be in a file of ``file_size`` bytes (a page missing or its strips
    past the end: the file was cut off), None if they can."""
    for number, page in enumerate(series.pages):
        if page is None:
            return f"page {number} is missing"
        end = max((o + n for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
        if end > file_size:
            return f"cut off at byte {file_size}, page {number}'s pixels run to byte {end}"
    return None


def _by_region(path: str):
    """The first series as a lazily read zarr array (the file stays open while the array is used)."""
    import zarr

    tif = tifffile.TiffFile(path)
    array = zarr.open(tif.series[0].aszarr(), mode="r")
    array.attrs  # noqa: B018 - fails early for a broken file
    return array


class TiffSource(DataSource):
    """The first image series of a TIFF file."""

    def __init__(self, path: str, axes: str | None):
        self.path = path
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, dtype = tuple(series.shape), series.dtype
                native_axes = _axes_from_tifffile(series.axes, shape)
                voxel_size = from_tiff(tif)
                missing = _missing_data(series, os.path.getsize(path))
        except (tifffile.TiffFileError, OSError, IndexError) as exc:
            raise unreadable(path, exc, "TIFF") from None
        if missing is not None:
            raise DataError(f"{path}: the file is damaged or incomplete (TIFF: {missing})")
        try:
            self.array = tifffile.memmap(path, mode="r")
        except (ValueError, OSError):  # compressed (or otherwise not mappable): read by region
            self.array = _by_region(path)
        if self.array.shape != shape:
            self.array = np.asarray(self.array).reshape(shape)
        super().__init__(path, shape, dtype, axes or native_axes)
        self.voxel_size = voxel_size

    def _read_native(self, index: tuple[slice, ...]) -> np.ndarray:
        return self.array[index]

    def _identity(self) -> str:
        return f"{file_identity(self.path)}|{super()._identity()}"
