"""Open image data by path: HDF5, TIFF, PNG and other 2D images, .npy, zarr/OME-Zarr, N5, stacks."""

from __future__ import annotations

import glob
import os

from backend.errors import DataError
from backend.io.sources.base import CANONICAL, DataSource, parse_axistags

__all__ = ["CANONICAL", "DataSource", "open_source", "split_internal_path", "parse_axistags"]

_CONTAINERS = (".h5", ".hdf5", ".hdf", ".he5", ".ilp", ".zarr", ".n5")
_IMAGES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def split_internal_path(spec: str) -> tuple[str, str | None]:
    """Split ``file.h5/group/data`` into the file path and the path inside it."""
    lower = spec.lower()
    for ext in _CONTAINERS:
        pos = lower.find(ext + "/")
        if pos >= 0:
            cut = pos + len(ext)
            return spec[:cut], spec[cut + 1 :] or None
    return spec, None


def _stack_paths(spec: str) -> list[str] | None:
    if os.pathsep in spec and not os.path.exists(spec):
        return [p for p in spec.split(os.pathsep) if p]
    if any(ch in spec for ch in "*?[") and not os.path.exists(spec):
        return sorted(glob.glob(spec))
    return None


SUPPORTED_DTYPES = ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32",
                    "float64")


def open_source(spec: str, axes: str | None = None, base_dir: str | None = None) -> DataSource:
    """Open the image named by ``spec`` (relative paths resolve against ``base_dir``); DataError says what is wrong
    with a file that is missing, unreadable, empty or of an unsupported pixel type."""
    try:
        source = _open(spec, axes, base_dir)
    except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise DataError(f"{spec}: cannot read this image ({type(exc).__name__}: {str(exc)[:200]})") from None
    if source.dtype.name not in SUPPORTED_DTYPES:
        raise DataError(f"{spec}: pixel type {source.dtype.name} is not supported (use one of "
                        f"{', '.join(SUPPORTED_DTYPES)}; convert float16 or complex data first)")
    if 0 in source.shape:
        raise DataError(f"{spec}: the image is empty (shape {source.native_shape})")
    resolved = os.path.join(base_dir, spec) if base_dir and not os.path.isabs(spec) else spec
    source.spec = resolved if os.pathsep in resolved else os.path.abspath(resolved)
    return source


def _open(spec: str, axes: str | None, base_dir: str | None) -> DataSource:
    from backend.io.sources.arrays import open_image, open_npy
    from backend.io.sources.hdf5 import Hdf5Source
    from backend.io.sources.n5 import N5Source
    from backend.io.sources.stack import StackSource
    from backend.io.sources.tiff import TiffSource
    from backend.io.sources.zarr_source import ZarrSource

    if base_dir and not os.path.isabs(spec):
        spec = os.path.join(base_dir, spec)
    stack = _stack_paths(spec)
    if stack is not None:
        if not stack:
            raise DataError(f"{spec}: no files match this pattern")
        return StackSource([open_source(p) for p in stack], stack, axes)
    path, internal = split_internal_path(spec)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    lower = path.lower().rstrip("/")
    if lower.endswith((".h5", ".hdf5", ".hdf", ".he5", ".ilp")):
        return Hdf5Source(path, internal, axes)
    if lower.endswith(".n5") or os.path.exists(os.path.join(path, internal or "", "attributes.json")):
        return N5Source(path, internal, axes)
    if lower.endswith(".zarr") or os.path.isdir(path):
        return ZarrSource(path, internal, axes)
    if lower.endswith((".tif", ".tiff")):
        return TiffSource(path, axes)
    if lower.endswith(".npy"):
        return open_npy(path, axes)
    if lower.endswith(_IMAGES):
        return open_image(path, axes)
    raise DataError(f"{path}: unknown image format (use HDF5, TIFF, PNG, .npy or zarr)")
