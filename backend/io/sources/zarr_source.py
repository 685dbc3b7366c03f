"""zarr arrays and OME-Zarr images (first scale), read lazily chunk by chunk."""

from __future__ import annotations

import os

import numpy as np

from backend.errors import DataError
from backend.io.ngff import read_multiscales
from backend.io.sources.base import DataSource, tree_identity


class ZarrSource(DataSource):
    """A zarr array (v2 or v3 format); a group with OME multiscales opens its first scale."""

    def __init__(self, path: str, internal: str | None, axes: str | None):
        import zarr

        self.path = path
        try:
            node = zarr.open(path, mode="r")
            if internal:
                node = node[internal.strip("/")]
        except Exception as exc:  # zarr raises several types for missing or broken stores
            raise DataError(f"{path}: not a readable zarr store ({exc})") from None
        native_axes = voxel_size = None
        if isinstance(node, zarr.Group):
            ome = read_multiscales(dict(node.attrs))
            if ome is None:
                arrays = [name for name, _ in node.arrays()]
                if len(arrays) != 1:
                    raise DataError(f"{path}: a zarr group with {len(arrays)} arrays; name one as {path}/NAME")
                node = node[arrays[0]]
            else:
                scale_path, native_axes, voxel_size = ome
                node = node[scale_path]
        self.array = node
        shape = tuple(node.shape)
        super().__init__(path, shape, np.dtype(node.dtype), axes or native_axes)
        self.voxel_size = voxel_size

    def _read_native(self, index: tuple[slice, ...]) -> np.ndarray:
        return self.array[index]

    def _identity(self) -> str:
        array_folder = os.path.join(self.path, self.array.path) if self.array.path else self.path
        return f"{tree_identity(array_folder)}|{super()._identity()}"
