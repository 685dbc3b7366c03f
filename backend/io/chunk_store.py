"""A chunk-aligned zarr output that the computing processes write into themselves (``--shared-filesystem``).

The gateway creates (or joins) the output once: an OME-Zarr image group as the ordinary zarr export writes it,
whose array's chunks are the export's blocks (one time step and one channel each), plus an attribute that
says which data, pipeline, source, region and blocks it holds. Each task then carries a *target* (a small
JSON-able dict, :meth:`SharedOutput.target`); the process that computed the block encodes its chunks with the
array's own codec and writes each one atomically (a temporary file in the same folder, then ``os.replace``),
so a process killed mid-write leaves at worst a ``.partial`` file, never a torn chunk.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from backend.compute.geometry import Roi
from backend.compute.pipeline import WRITTEN, BlockTask
from backend.errors import UserError
from backend.io.ngff import LEVEL, multiscales
from backend.io.voxel_size import VoxelSize

ATTRIBUTE = "ilastik_desktop_export"  # the group attribute naming what the output holds
PARTIAL = ".partial"  # the suffix of a chunk being written
SEPARATOR = "."  # zarr v2's dimension separator


@dataclass(frozen=True)
class SharedOutput:
    """An output created (or joined) by :func:`create_or_join`; ``run`` names it in the cache's records."""

    path: str
    axes: str  # NGFF order, e.g. tczyx
    region: Roi  # tzyx, global
    chunks: dict  # per axis letter
    meta: dict  # the array's .zarray
    run: str

    @property
    def array_path(self) -> str:
        """The folder of the array's chunks."""
        return os.path.join(self.path, LEVEL)

    def target(self, block: Roi) -> dict:
        """Where the values of ``block`` (tzyx, one time step, global) go: what a task carries."""
        return {"array": self.array_path, "axes": self.axes, "region": [list(self.region.start),
                                                                      list(self.region.stop)],
                "block": [list(block.start), list(block.stop)], "chunks": [self.chunks[a] for a in self.axes],
                "dtype": self.meta["dtype"], "compressor": self.meta["compressor"]}

    def holds(self, block: Roi, channels: int) -> bool:
        """Whether every chunk of ``block`` (its ``channels``) is on disk and whole: what a finished write left."""
        target = self.target(block)
        size = int(np.prod(target["chunks"])) * np.dtype(target["dtype"]).itemsize
        codec = _codec(target)
        for name in chunk_names(target, channels):
            try:
                with open(os.path.join(self.array_path, name), "rb") as f:
                    data = f.read()
                if len(codec.decode(data) if codec is not None else data) != size:
                    return False
            except (OSError, ValueError, RuntimeError, TypeError):  # missing, or not a chunk of this array
                return False
        return True

    def remove_partials(self, mine: Callable[[tuple[int, ...]], bool]) -> int:
        """Delete the ``.partial`` files of killed writers whose chunk index ``mine`` accepts; how many."""
        removed = 0
        with os.scandir(self.array_path) as entries:
            for entry in entries:
                if not (entry.name.startswith(".") and entry.name.endswith(PARTIAL)):
                    continue
                index = entry.name[1:].split("~")[0].split(SEPARATOR)
                if all(part.isdigit() for part in index) and mine(tuple(int(part) for part in index)):
                    try:
                        os.unlink(entry.path)
                        removed += 1
                    except FileNotFoundError:
                        pass
        return removed


def create_or_join(path: str, axes: str, region: Roi, channels: int, dtype: np.dtype, block_shape: tuple[int, ...],
                   voxel_size: VoxelSize | None, identity: dict) -> SharedOutput:
    """The output at ``path``: created whole under a temporary name and renamed into place, or, if another
    gateway (or an earlier run) made it first, joined when it holds the same ``identity`` (UserError if not)."""
    sizes = dict(zip("tzyx", region.shape), c=channels)
    chunks = dict(zip("tzyx", block_shape), t=1, c=1)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        what = "is a file, not a folder" if os.path.exists(parent) else "does not exist"
        raise UserError(f"{path}: the output folder {parent} {what}")
    wanted = {**identity, "region": [list(region.start), list(region.stop)], "axes": axes}
    if not os.path.exists(path):
        temporary = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.creating")
        try:
            _create(temporary, path, axes, [sizes[a] for a in axes], [chunks[a] for a in axes], dtype, voxel_size,
                    {**wanted, "run": uuid.uuid4().hex})
            os.rename(temporary, path)  # atomic: one gateway's output wins, whole
        except OSError as exc:
            if not os.path.exists(path):
                raise UserError(f"{path}: cannot write the output here ({exc.strerror or exc})") from None
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
    return _join(path, axes, region, chunks, wanted)


def _create(folder: str, path: str, axes: str, shape: list[int], chunks: list[int], dtype: np.dtype,
            voxel_size: VoxelSize | None, description: dict) -> None:
    import zarr

    group = zarr.open_group(folder, mode="w", zarr_format=2)
    group.attrs["multiscales"] = multiscales(os.path.splitext(os.path.basename(path))[0], axes, voxel_size)
    group.attrs[ATTRIBUTE] = description
    group.create_array(LEVEL, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)


def _join(path: str, axes: str, region: Roi, chunks: dict, wanted: dict) -> SharedOutput:
    try:
        with open(os.path.join(path, ".zattrs")) as f:
            found = json.load(f).get(ATTRIBUTE)
        with open(os.path.join(path, LEVEL, ".zarray")) as f:
            meta = json.load(f)
    except (OSError, ValueError, AttributeError):
        found, meta = None, None
    if not isinstance(found, dict) or not isinstance(meta, dict):
        raise UserError(f"{path} is there already and is not a --shared-filesystem export; remove it or choose "
                        "another --output_filename_format")
    differs = sorted(k for k in set(wanted) | set(found) - {"run"} if found.get(k) != wanted.get(k))
    if differs:
        verb = "differs" if len(differs) == 1 else "differ"
        raise UserError(f"{path} is there already with other settings ({', '.join(differs)} {verb}: another "
                        "classifier, source, region or block shape); remove it or choose another "
                        "--output_filename_format")
    return SharedOutput(path, axes, region, chunks, meta, str(found["run"]))


def check_target(target) -> dict:
    """``target`` if it has the fields of :meth:`SharedOutput.target` (or of an HDF5 writer's,
    :meth:`~backend.io.h5_writer.H5Output.target`) with sane values; ValueError if not."""
    from backend.io.h5_writer import check_writer_target, is_writer_target

    if isinstance(target, dict) and is_writer_target(target):
        if not (_bounds(target.get("region")) and _bounds(target.get("block"))):
            raise ValueError("a task's output has malformed region or block")
        return check_writer_target(target)
    if not isinstance(target, dict) or not isinstance(target.get("array"), str) \
            or not os.path.isabs(target["array"]) or not isinstance(target.get("axes"), str) \
            or not set(target["axes"]) <= set("tczyx"):
        raise ValueError("a task's output must name an absolute array folder and its axes")
    region, block, chunks = target.get("region"), target.get("block"), target.get("chunks")
    if not (_bounds(region) and _bounds(block) and isinstance(chunks, list) and len(chunks) == len(target["axes"])
            and all(isinstance(n, int) and n > 0 for n in chunks)):
        raise ValueError("a task's output has malformed region, block or chunks")
    np.dtype(target.get("dtype"))  # TypeError for anything that is no dtype
    return target


def _bounds(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, list) and len(v) == 4 and all(isinstance(n, int) and n >= 0 for n in v) for v in value)


def with_raw(task: BlockTask, opened: dict) -> BlockTask:
    """``task`` with its raw data read by this process when the task names its file instead of carrying it
    (each file opened once and kept in ``opened``)."""
    if task.raw_ref is None or task.raw.size:
        return task
    return replace(task, raw=read_raw(task.raw_ref, opened))


def read_raw(reference: dict, opened: dict) -> np.ndarray:
    """Raw data (z, y, x, c) a task names by file and region (workers on a shared file system); each file is
    opened once per process and kept in ``opened``."""
    from backend.io.sources import open_source

    name = (reference["spec"], reference["axes"])
    if name not in opened:
        try:
            opened[name] = open_source(reference["spec"], axes=reference["axes"])
        except Exception as exc:
            raise OSError(f"worker cannot open {reference['spec']}: {exc}") from None
    return opened[name].read(Roi(tuple(reference["start"]), tuple(reference["stop"])))[0]


def stored(task: BlockTask, values: np.ndarray) -> np.ndarray:
    """The answer to ``task``: its values, or, when it names its output, :data:`WRITTEN` once they are there."""
    if task.output is None:
        return values
    from backend.io.h5_writer import is_writer_target, send_block

    if is_writer_target(task.output):
        send_block(task.output, values)
    else:
        write_block(task.output, values)
    return WRITTEN


def write_block(target: dict, values: np.ndarray) -> int:
    """Write a block's ``values`` (z, y, x, c over the target's block) into its chunks, each atomically; the part
    outside the region is left out and a chunk's edge padding is the fill value 0. Returns the chunks written."""
    axes, dtype = target["axes"], np.dtype(target["dtype"])
    region_stop, block_start, block_stop = target["region"][1], *target["block"]
    extent = {a: min(stop, end) - start for a, start, stop, end in zip("tzyx", block_start, block_stop, region_stop)}
    chunks = dict(zip(axes, target["chunks"]))
    codec = _codec(target)
    values = values[:extent["z"], :extent["y"], :extent["x"]]
    for channel, name in enumerate(chunk_names(target, values.shape[-1])):
        padded = np.zeros([chunks[a] for a in axes], dtype)
        padded[tuple(slice(0, 1) if a in "tc" else slice(0, extent[a]) for a in axes)] = \
            values[..., channel].reshape([1 if a in "tc" else extent[a] for a in axes])
        data = np.ascontiguousarray(padded).tobytes()
        _replace(target["array"], name, codec.encode(data) if codec is not None else data)
    return values.shape[-1]


def chunk_names(target: dict, channels: int) -> list[str]:
    """The file names of the chunks of the target's block, one per channel (each chunk holds one channel)."""
    axes, chunks = target["axes"], dict(zip(target["axes"], target["chunks"]))
    local = {a: b - r for a, b, r in zip("tzyx", target["block"][0], target["region"][0])}
    names = []
    for channel in range(channels):
        index = {**{a: local[a] // chunks.get(a, 1) for a in "tzyx"}, "c": channel // chunks.get("c", 1)}
        names.append(SEPARATOR.join(str(index[a]) for a in axes))
    return names


def _codec(target: dict):
    import numcodecs

    return numcodecs.get_codec(target["compressor"]) if target["compressor"] else None


def _replace(folder: str, name: str, data: bytes) -> None:
    """Write the chunk file ``name`` whole: readers see the old file or the new one, never part of it."""
    temporary = os.path.join(folder, f".{name}~{uuid.uuid4().hex[:12]}{PARTIAL}")
    try:
        with open(temporary, "wb") as f:
            f.write(data)
        os.replace(temporary, os.path.join(folder, name))
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
