"""Sources for whole or memory-mapped arrays: .npy, PNG and other 2D image formats, in-memory data."""

from __future__ import annotations

import numpy as np

from backend.errors import DataError
from backend.io.sources.base import DataSource, file_identity
from backend.io.sources.damage import unreadable


class ArraySource(DataSource):
    """An array already in memory (or memory-mapped)."""

    def __init__(self, array: np.ndarray, axes: str | None, description: str = "<array>"):
        self.array = array
        super().__init__(description, array.shape, array.dtype, axes)

    def _read_native(self, index: tuple[slice, ...]) -> np.ndarray:
        return self.array[index]

    def _identity(self) -> str:
        if self.description == "<array>":
            return f"array|{self.array.shape}|{self.array.dtype}|{hash(self.array.tobytes())}"
        return f"{file_identity(self.description)}|{super()._identity()}"


def open_npy(path: str, axes: str | None) -> ArraySource:
    """A memory-mapped ``.npy`` file."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None
    return ArraySource(array, axes, path)


def open_image(path: str, axes: str | None) -> ArraySource:
    """A PNG, JPEG, BMP or similar 2D image read whole (these formats are small)."""
    import imageio.v3 as iio

    try:
        array = np.asarray(iio.imread(path))
    except Exception as exc:  # imageio raises many types for unreadable files
        raise unreadable(path, exc, "PNG, JPEG, BMP or GIF") from None
    if axes is None:
        axes = "yx" if array.ndim == 2 else "yxc"
    return ArraySource(array, axes, path)
