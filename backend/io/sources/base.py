"""The DataSource interface: an image read by ROI in the canonical axis order ``tzyxc``."""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod

import numpy as np

from backend.compute.geometry import Roi
from backend.errors import DataError
from backend.io.voxel_size import VoxelSize
from backend.wording import counted

CANONICAL = "tzyxc"
SPATIAL = "tzyx"


def parse_axistags(text: str | bytes) -> str:
    """Axis keys (e.g. ``'zyxc'``) from vigra's JSON axistags."""
    if isinstance(text, bytes):
        text = text.decode()
    return "".join(axis["key"] for axis in json.loads(text)["axes"]).lower()


def guess_axes(shape: tuple[int, ...]) -> str:
    """The axes ilastik would assume for an array of this shape when nothing says otherwise."""
    ndim = len(shape)
    if ndim == 2:
        return "yx"
    if ndim == 3:
        return "yxc" if shape[-1] <= 4 else "zyx"
    if ndim == 4:
        return "zyxc" if shape[-1] <= 4 else "tzyx"
    if ndim == 5:
        return "tzyxc"
    raise DataError(f"cannot guess the axes of a {ndim}-d array {shape}: pass --input_axes")


def axes_problem(axes: str, ndim: int | None = None) -> str | None:
    """What is wrong with ``axes`` as the axis letters of an image with ``ndim`` axes (None: any number), in
    words; None if nothing is."""
    if ndim is not None and len(axes) != ndim:
        return (f"the image has {counted(ndim, 'axis', 'axes')}, '{axes}' names {len(axes)} "
                "(one letter per axis)")
    if not axes:
        return "no axes are named"
    unknown = "".join(dict.fromkeys(a for a in axes if a not in CANONICAL))
    if unknown:
        return f"'{axes}' names {', '.join(unknown)}, not one of t, z, y, x, c"
    repeated = "".join(dict.fromkeys(a for a in axes if axes.count(a) > 1))
    if repeated:
        return f"'{axes}' names {', '.join(repeated)} more than once (each of t, z, y, x, c at most once)"
    return None


def check_axes(axes: str, ndim: int, where: str) -> str:
    """Validate an axes string against an array's dimensionality."""
    axes = axes.lower()
    wrong = axes_problem(axes, ndim)
    if wrong is not None:
        raise DataError(f"{where}: axes '{axes}' do not fit: {wrong}")
    return axes


class SourceReadError(OSError):
    """Voxels of an opened image could not be read (a damaged chunk, a disk or network error); the message names
    the file and the region. The blocks that needed them fail with it; like every OSError it is never cached,
    since the file may be repaired or the error pass."""


class DataSource(ABC):
    """An image in some file, seen as a 5-d ``tzyxc`` array and read by ``tzyx`` ROIs."""

    def __init__(self, description: str, native_shape: tuple[int, ...], dtype: np.dtype, axes: str | None):
        self.description = description
        self.spec: str | None = None  # what open_source opens it by again (set by open_source)
        self.voxel_size: VoxelSize | None = None  # the physical size of a voxel, if the file says
        self.native_shape = tuple(int(s) for s in native_shape)
        self.dtype = np.dtype(dtype)
        self.axes_guessed = axes is None
        self.axes = check_axes(axes or guess_axes(self.native_shape), len(self.native_shape), description)

    def reinterpret(self, axes: str) -> None:
        """Use other axes for the same array (e.g. those the project recorded)."""
        self.axes = check_axes(axes, len(self.native_shape), self.description)
        self.axes_guessed = False

    @abstractmethod
    def _read_native(self, index: tuple[slice, ...]) -> np.ndarray:
        """Read a box given as slices in the file's own axis order."""

    @property
    def shape(self) -> tuple[int, ...]:
        """The canonical ``tzyxc`` shape (missing axes have length 1)."""
        sizes = dict(zip(self.axes, self.native_shape))
        return tuple(sizes.get(a, 1) for a in CANONICAL)

    @property
    def pixel_size(self) -> tuple[float, str] | None:
        """The in-plane (x) size of a pixel and its unit, if known (for the scale bar)."""
        return self.voxel_size.pixel_size if self.voxel_size is not None else None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The ``tzyx`` shape: the domain that ROIs live in."""
        return self.shape[:4]

    @property
    def channels(self) -> int:
        return self.shape[4]

    def read(self, roi: Roi) -> np.ndarray:
        """Voxels of a ``tzyx`` ROI as a ``(t, z, y, x, c)`` array in the file's dtype; :class:`SourceReadError`
        naming the file and the region if the file cannot give them."""
        if roi.ndim != 4 or not Roi.from_shape(self.spatial_shape).contains(roi):
            raise ValueError(f"ROI {roi} outside image {self.spatial_shape}")
        bounds = dict(zip(SPATIAL, roi.slices()))
        index = tuple(bounds.get(a, slice(None)) for a in self.axes)
        try:
            data = np.asarray(self._read_native(index))
        except (DataError, SourceReadError, MemoryError):
            raise
        except Exception as exc:  # whatever the file's library raises for a damaged chunk or a failing disk
            where = ", ".join(f"{a} {start}-{stop}" for a, start, stop in zip(SPATIAL, roi.start, roi.stop)
                              if a in self.axes)
            raise SourceReadError(f"{self.description}: cannot read the region {where} "
                                  f"({type(exc).__name__}: {exc})") from exc
        present = [a for a in CANONICAL if a in self.axes]
        data = data.transpose([self.axes.index(a) for a in present])
        out_shape = roi.shape + (self.channels,)
        return data.reshape(out_shape)

    def reference(self, roi: Roi) -> dict:
        """What a process that sees the same files needs to read ``roi`` itself (file, axes, region)."""
        return {"spec": self.spec, "axes": self.axes, "start": list(roi.start), "stop": list(roi.stop)}

    def fingerprint(self) -> str:
        """A short digest that changes whenever the data may have changed."""
        return hashlib.sha1(self._identity().encode()).hexdigest()[:16]

    def _identity(self) -> str:
        return f"{self.description}|{self.native_shape}|{self.dtype}|{self.axes}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description} {self.axes} {self.native_shape} {self.dtype}>"


def tree_identity(path: str) -> str:
    """For chunked formats (zarr, N5): file count, total size and newest modification time of every file
    below ``path``, so that a chunk rewritten, added or removed in place changes the fingerprint. A rewrite
    that keeps a chunk's size and modification time (a copy with preserved times) is not detected."""
    if not os.path.isdir(path):
        return file_identity(path)
    count = size = newest = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            count, size, newest = count + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return f"{os.path.abspath(path)}|{count}|{size}|{newest}"


def file_identity(path: str) -> str:
    """Path, size and modification time of a file or directory, for fingerprints."""
    try:
        st = os.stat(path)
    except OSError:
        return path
    return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
