"""HDF5 datasets read lazily by ROI (h5py reads only the chunks a ROI touches)."""

from __future__ import annotations

import threading

import h5py
import numpy as np

from backend.errors import DataError
from backend.io.sources.base import DataSource, file_identity, parse_axistags
from backend.io.voxel_size import from_hdf5


def _default_dataset(f: h5py.File) -> str:
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    if len(names) == 1:
        return names[0]
    raise DataError(
        f"{f.filename}: holds {len(names)} datasets; name one as FILE.h5/internal/path"
        + (f" (e.g. {f.filename}/{names[0]})" if names else "")
    )


class Hdf5Source(DataSource):
    """One dataset of an HDF5 file, opened on first read in each process."""

    def __init__(self, path: str, internal: str | None, axes: str | None):
        self.path = path
        try:
            with h5py.File(path, "r") as f:
                self.internal = internal.strip("/") if internal else _default_dataset(f)
                if self.internal not in f or not isinstance(f[self.internal], h5py.Dataset):
                    raise DataError(f"{path}: no dataset '{self.internal}' in this file")
                ds = f[self.internal]
                shape, dtype = ds.shape, ds.dtype
                if axes is None and "axistags" in ds.attrs:
                    axes = parse_axistags(ds.attrs["axistags"])
                self.chunks = ds.chunks
                attrs = {k: ds.attrs[k] for k in ("axistags", "axis_units", "element_size_um") if k in ds.attrs}
        except OSError as exc:
            raise DataError(f"{path}: not a readable HDF5 file ({exc})") from None
        self._file: h5py.File | None = None
        self._lock = threading.Lock()
        super().__init__(f"{path}/{self.internal}", shape, dtype, axes)
        self.voxel_size = from_hdf5(attrs, self.axes)

    def _read_native(self, index: tuple[slice, ...]) -> np.ndarray:
        with self._lock:
            if self._file is None:
                self._file = h5py.File(self.path, "r")
            return self._file[self.internal][index]

    def close(self) -> None:
        """Release the file handle."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _identity(self) -> str:
        return f"{file_identity(self.path)}|{super()._identity()}"
