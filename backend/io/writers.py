"""Block-wise writers for export results: HDF5, .npy, TIFF and OME-Zarr, with the raw data's voxel size.

Each writer fills a file under a temporary name and renames it when :meth:`commit` is called, so an
interrupted export never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import tempfile
import time

import numpy as np

from backend.compute.geometry import Roi
from backend.errors import UserError
from backend.io.ngff import LEVEL, multiscales, ngff_axes
from backend.io.sources.base import CANONICAL
from backend.io.voxel_size import SPACE, TIFF_CENTIMETER, VoxelSize

FORMATS = {"hdf5": ".h5", "npy": ".npy", "tif": ".tif", "zarr": ".zarr"}
HDF5_COMPRESSION = {"compression": "gzip", "compression_opts": 1, "shuffle": True}  # ilastik's gzip level, shuffled
CHUNK_BYTES = 1 << 20  # a chunk is read whole for any voxel of it: about 1 MB
MIN_CHUNK_EDGE = 16  # chunks are not cut thinner than this to save padding
PADDING_SHARE = 0.125  # edge padding allowed per axis, as a share of the axis
WIDEN_SLAB_ITEMS = 1 << 22  # values copied at a time when an output is widened to a larger type


def output_axes(raw_axes: str) -> str:
    """The export's axes: the raw data's axes with the channel axis last (as ilastik writes)."""
    return raw_axes.replace("c", "") + "c"


def tiff_options(size: VoxelSize | None, axes: str) -> dict:
    """tifffile's ``imwrite`` options that record ``size``: XResolution/YResolution in pixels per centimetre (as
    every TIFF reader understands) and, in the description, ImageJ's ``unit`` and the z ``spacing``. Without a
    size: the description alone (tifffile then writes a resolution of 1 per no unit, as before)."""
    options: dict = {"metadata": {"axes": axes.upper()}}
    if size is None:
        return options
    in_cm = size.in_unit("cm")
    options["resolution"] = (1.0 / in_cm["x"], 1.0 / in_cm.get("y", in_cm["x"]))
    options["resolutionunit"] = TIFF_CENTIMETER
    options["metadata"]["unit"] = size.unit
    if size.along("z") is not None and "z" in axes:
        options["metadata"]["spacing"] = size.along("z")
    return options


def axistags_json(axes: str, size: VoxelSize | None = None) -> str:
    """vigra's axistags JSON for ``axes`` as ilastik writes it (``AxisTags.toJSON``), with each spatial axis's
    ``resolution`` (the voxel size, 0 where unknown), so ilastik and our reader know axis order and size."""
    flags = {"t": 8, "c": 1}
    known = size.in_unit(size.unit) if size is not None else {}
    return json.dumps({"axes": [{"key": a, "typeFlags": flags.get(a, 2), "resolution": known.get(a, 0),
                                 "description": ""} for a in axes]}, indent=2)


def hdf5_attrs(axes: str, size: VoxelSize | None) -> dict:
    """The attributes that describe an HDF5 dataset of ``axes``: ilastik's ``axistags`` always; with a size also
    ilastik's ``axis_units``, and ``element_size_um`` (one value per spatial axis, in micrometres) when every
    spatial axis's size is known."""
    attrs: dict = {"axistags": axistags_json(axes, size)}
    if size is not None:
        attrs["axis_units"] = json.dumps({a: size.unit if size.along(a) is not None else "" for a in axes})
        microns = size.in_unit("µm")
        spatial = [a for a in axes if a in SPACE]
        if all(a in microns for a in spatial):
            attrs["element_size_um"] = [microns[a] for a in spatial]
    return attrs


def chunk_shape(shape: tuple[int, ...], block: tuple[int, ...], itemsize: int,
                target_bytes: int = CHUNK_BYTES) -> tuple[int, ...]:
    """Chunks (HDF5, zarr) for an array of ``shape`` written in blocks of ``block``: the block clipped to the shape,
    halved (keeping it a divisor of the block, so blocks cover whole chunks) along the largest axis while a chunk
    holds more than ``target_bytes``, and along any axis whose edge chunk would be mostly padding (HDF5 and zarr
    store edge chunks whole)."""
    chunks = [max(1, min(b, s)) for b, s in zip(block, shape)]

    def halvable(i: int) -> bool:
        return chunks[i] % 2 == 0 and chunks[i] > 1

    while math.prod(chunks) * itemsize > target_bytes:
        candidates = [i for i in range(len(chunks)) if halvable(i)]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: chunks[i])
        chunks[widest] //= 2
    for i, size in enumerate(shape):
        while halvable(i) and chunks[i] >= MIN_CHUNK_EDGE * 2 and -size % chunks[i] > size * PADDING_SHARE:
            chunks[i] //= 2
    return tuple(chunks)


def check_output_folder(path: str) -> str:
    """The folder the output ``path`` goes into; UserError when it does not exist or cannot be written."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"{path}: the output folder {parent} does not exist")
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as exc:
        raise UserError(f"{path}: cannot write the output here ({exc.strerror or exc})") from None
    return parent


class BlockWriter:
    """Writes ``(t, z, y, x, c)`` blocks of the region ``region`` (tzyx) into an array-like target, recording
    ``voxel_size`` in the format's own metadata. zarr output is an OME-Zarr image, so its axes are put in NGFF
    order (t, c, z, y, x). The value type can be widened while writing (:meth:`widen`), and attributes recorded
    when the file is committed (:meth:`describe`)."""

    def __init__(self, path: str, fmt: str, axes: str, region: Roi, channels: int, dtype: np.dtype,
                 block_shape: tuple[int, ...], internal_path: str = "exported_data",
                 voxel_size: VoxelSize | None = None):
        if fmt not in FORMATS:
            raise UserError(f"unknown output format '{fmt}' (choose one of {', '.join(FORMATS)})")
        axes = ngff_axes(axes) if fmt == "zarr" else axes
        self.path, self.fmt, self.axes, self.region = path, fmt, axes, region
        self.channels, self.dtype, self.voxel_size = channels, np.dtype(dtype), voxel_size
        self.partial = _partial_name(path)
        sizes = dict(zip("tzyx", region.shape), c=channels)
        shape = tuple(sizes[a] for a in axes)
        block = dict(zip("tzyx", block_shape), t=1, c=1)  # a chunk per time step and channel, as ilastik's
        chunks = chunk_shape(shape, tuple(block[a] for a in axes), self.dtype.itemsize)
        parent = check_output_folder(path)
        self._file, self.array = None, None
        self._chunks, self._internal_path, self._attributes = chunks, internal_path, {}
        try:
            _remove(self.partial)
            open(self.partial, "wb").close()  # an unwritable folder says so, not that it has no room
            _remove(self.partial)
            _check_space(path, parent, fmt, math.prod(shape) * self.dtype.itemsize)
            self.array = self._create(shape, chunks, internal_path)
        except (OSError, UserError) as exc:
            with contextlib.suppress(OSError):
                self.abort()
            if isinstance(exc, UserError):
                raise
            raise UserError(f"{path}: cannot write the output here ({exc.strerror or exc})") from None
        self._order = [CANONICAL.index(a) for a in axes] + [i for i, a in enumerate(CANONICAL) if a not in axes]

    def _create(self, shape: tuple[int, ...], chunks: tuple[int, ...], internal_path: str):
        if self.fmt == "hdf5":
            import h5py

            self._file = h5py.File(self.partial, "w")
            ds = self._file.create_dataset(internal_path, shape=shape, dtype=self.dtype, chunks=chunks,
                                           **HDF5_COMPRESSION)
            ds.attrs.update(hdf5_attrs(self.axes, self.voxel_size))
            return ds
        if self.fmt == "npy":
            return np.lib.format.open_memmap(self.partial, mode="w+", dtype=self.dtype, shape=shape)
        if self.fmt == "tif":
            import tifffile

            options = tiff_options(self.voxel_size, self.axes)
            if shape[-1] > 1:  # channels as samples of grey values, never taken for RGB (3 or 4 of them were)
                options.update(planarconfig="contig", metadata={**options["metadata"],
                                                                "axes": self.axes.upper()[:-1] + "S"})
            return tifffile.memmap(self.partial, shape=shape, dtype=self.dtype, photometric="minisblack", **options)
        import zarr

        group = zarr.open_group(self.partial, mode="w", zarr_format=2)
        name = os.path.splitext(os.path.basename(self.path))[0]
        group.attrs["multiscales"] = multiscales(name, self.axes, self.voxel_size)
        return group.create_array(LEVEL, shape=shape, chunks=chunks, dtype=self.dtype, fill_value=0)

    def write(self, roi: Roi, block: np.ndarray) -> None:
        """Store the result of a tzyx ``roi`` (global coordinates) given as (t, z, y, x, c)."""
        local = roi.shift(tuple(-s for s in self.region.start))
        bounds = dict(zip("tzyx", local.slices()), c=slice(None))
        native = block.transpose(self._order).reshape([block.shape[i] for i in self._order[: len(self.axes)]])
        self.array[tuple(bounds[a] for a in self.axes)] = native

    def widen(self, dtype: np.dtype) -> None:
        """Store values of the larger type ``dtype`` from now on (object IDs beyond uint32, say): what was written
        so far is copied into a new array of that type, a slab at a time, and the old one deleted."""
        narrow = (self.array, self._file, self.partial, self.dtype)
        self.dtype, self._file = np.dtype(dtype), None
        self.partial = _partial_name(self.path, self.dtype.name)
        try:
            _remove(self.partial)
            _check_space(self.path, os.path.dirname(self.partial), self.fmt,
                         math.prod(narrow[0].shape) * self.dtype.itemsize)
            self.array = self._create(narrow[0].shape, self._chunks, self._internal_path)
            for index in _slabs(narrow[0].shape, WIDEN_SLAB_ITEMS):
                self.array[index] = narrow[0][index]
        except BaseException:
            with contextlib.suppress(OSError):
                self.abort()
            self.array, self._file, self.partial, self.dtype = narrow
            raise
        _release(*narrow[:2])
        _remove(narrow[2])

    def describe(self, **attributes) -> None:
        """Record ``attributes`` (numbers, strings) in the output's metadata when it is committed: on the HDF5
        dataset, in the zarr array's attributes, in a TIFF's JSON description (.npy has no place for them)."""
        self._attributes.update(attributes)

    def commit(self) -> None:
        """Record the attributes, flush, close and move the finished file to its final name."""
        if self.fmt in ("hdf5", "zarr"):
            self.array.attrs.update(self._attributes)
        self._close()
        if self.fmt == "tif" and self._attributes:
            _describe_tiff(self.partial, self._attributes)
        _remove(self.path)
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Close and delete the unfinished file."""
        self._close()
        _remove(self.partial)

    def _close(self) -> None:
        _release(self.array, self._file)
        self._file, self.array = None, None


def _release(array, file) -> None:
    """Close an output's HDF5 file, or flush its memory map."""
    if file is not None:
        file.close()
    elif hasattr(array, "flush"):
        array.flush()


def _slabs(shape: tuple[int, ...], limit: int):
    """Indices that cut an array of ``shape`` along its leading axes into slabs of at most ``limit`` values (or
    a single row of the last axis)."""
    lead = 0
    while lead < len(shape) - 1 and math.prod(shape[lead:]) > limit:
        lead += 1
    return (index + (Ellipsis,) for index in itertools.product(*(range(n) for n in shape[:lead])))


def _describe_tiff(path: str, attributes: dict) -> None:
    """Add ``attributes`` to the TIFF's JSON ImageDescription (tifffile's shaped description); a file without one
    is left as it is."""
    import tifffile

    try:
        description = json.loads(tifffile.tiffcomment(path) or "")
    except (ValueError, TypeError):
        return
    if isinstance(description, dict):
        tifffile.tiffcomment(path, json.dumps({**description, **attributes}))


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


def _partial_name(path: str, variant: str = "") -> str:
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".{tail}{'.' + variant if variant else ''}.partial")


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
