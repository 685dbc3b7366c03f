"""N5 datasets (the format of BigDataViewer/Paintera), read block by block.

Layout: ``attributes.json`` gives ``dimensions`` and ``blockSize`` fastest axis first, ``dataType`` and
``compression``; block ``(i, j, k)`` lives in the file ``i/j/k``, a big-endian header (mode, number of
dimensions, block size) followed by the compressed big-endian voxels. Missing blocks are zeros.
"""

from __future__ import annotations

import bz2
import gzip
import itertools
import json
import lzma
import os
import struct

import numpy as np

from backend.errors import DataError
from backend.io.sources.base import DataSource, tree_identity

_DECOMPRESS = {"raw": lambda b: b, "gzip": gzip.decompress, "bzip2": bz2.decompress, "xz": lzma.decompress}


def _compression(attrs: dict) -> str:
    value = attrs.get("compression", {"type": attrs.get("compressionType", "raw")})
    return value["type"] if isinstance(value, dict) else str(value)


class N5Source(DataSource):
    """One N5 dataset (a folder with ``attributes.json`` and block files)."""

    def __init__(self, path: str, internal: str | None, axes: str | None):
        self.path = os.path.join(path, internal.strip("/")) if internal else path
        try:
            with open(os.path.join(self.path, "attributes.json")) as f:
                attrs = json.load(f)
            self.block = tuple(int(v) for v in reversed(attrs["blockSize"]))
            shape = tuple(int(v) for v in reversed(attrs["dimensions"]))
            dtype = np.dtype(attrs["dataType"]).newbyteorder(">")
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise DataError(f"{self.path}: not an N5 dataset ({exc})") from None
        self.compression = _compression(attrs)
        if self.compression not in _DECOMPRESS:
            raise DataError(f"{self.path}: N5 compression '{self.compression}' is not supported "
                            f"(use one of {', '.join(_DECOMPRESS)})")
        native_axes = "".join(reversed(attrs["axes"])).lower() if "axes" in attrs else None
        super().__init__(self.path, shape, dtype.newbyteorder("="), axes or native_axes)

    def _read_native(self, index: tuple[slice, ...]) -> np.ndarray:
        bounds = [s.indices(n)[:2] for s, n in zip(index, self.native_shape)]
        out = np.zeros([b - a for a, b in bounds], self.dtype)
        ranges = [range(a // k, -(-b // k)) for (a, b), k in zip(bounds, self.block)]
        for grid in itertools.product(*ranges):
            block = self._read_block(grid)
            if block is None:
                continue
            lo = [g * k for g, k in zip(grid, self.block)]
            src = tuple(slice(max(a, o) - o, min(b, o + s) - o) for (a, b), o, s in zip(bounds, lo, block.shape))
            dst = tuple(slice(max(a, o) - a, min(b, o + s) - a) for (a, b), o, s in zip(bounds, lo, block.shape))
            out[dst] = block[src]
        return out

    def _read_block(self, grid: tuple[int, ...]) -> np.ndarray | None:
        name = os.path.join(self.path, *(str(g) for g in reversed(grid)))
        try:
            with open(name, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        mode, ndim = struct.unpack(">HH", raw[:4])
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        offset = 4 + 4 * ndim + (4 if mode == 1 else 0)
        data = np.frombuffer(_DECOMPRESS[self.compression](raw[offset:]), self.dtype.newbyteorder(">"))
        shape = tuple(reversed(dims))
        return data[: int(np.prod(shape))].reshape(shape).astype(self.dtype)

    def _identity(self) -> str:
        return f"{tree_identity(self.path)}|{super()._identity()}"
