"""A stack of 2D image files (a glob or a list) seen as one z stack."""

from __future__ import annotations

import numpy as np

from backend.compute.geometry import Roi
from backend.errors import DataError
from backend.io.sources.base import DataSource, file_identity


class StackSource(DataSource):
    """2D images of equal shape stacked along z; each slice is read when a ROI needs it."""

    def __init__(self, slices: list[DataSource], paths: list[str], axes: str | None):
        """``slices``: the opened images of ``paths``, in order."""
        if not paths:
            raise DataError("an image stack with no files")
        self.slices = slices
        first = self.slices[0]
        for s in self.slices[1:]:
            if s.shape != first.shape or s.dtype != first.dtype:
                raise DataError(f"{s.description}: shape or type differs from {first.description}")
        if first.shape[:2] != (1, 1):
            raise DataError(f"{first.description}: stacks must be made of 2D images")
        shape = (len(paths),) + first.shape[2:]
        self.paths = paths
        super().__init__(f"{paths[0]} (+{len(paths) - 1} files)", shape, first.dtype, axes or "zyxc")

    def _read_native(self, index: tuple[slice, ...]) -> np.ndarray:
        zs = range(len(self.slices))[index[0]]
        h, w = self.native_shape[1:3]
        parts = [self.slices[z].read(Roi((0, 0, 0, 0), (1, 1, h, w)))[0, 0] for z in zs]
        return np.stack(parts)[(slice(None),) + index[1:]]

    def _identity(self) -> str:
        return "|".join(file_identity(p) for p in self.paths)
