"""Labelling a frame's objects as block tasks for any executor (ZeroMQ workers, local processes, Dask).

An :class:`ObjectsPipeline` holds the threshold settings and travels like a classifier's
:class:`~backend.compute.pipeline.Pipeline` (a JSON header, no arrays, no pickle). Its two task kinds
take a block's probabilities with their smoothing halo as the task's input: ``Object Summary`` (pass 1)
answers the block's :class:`~backend.compute.object_blocks.BlockSummary` packed into one int64 array,
``Object Labels`` (pass 2) applies the task's lookup table to the block's local labels. A worker's reply
is untrusted: :func:`unpack_summary` checks every count, size, index and plane shape.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from backend.checks import whole_number
from backend.compute.object_blocks import (
    BlockSummary,
    Box,
    Index,
    MaskSummary,
    block_labels,
    summarise_block,
)
from backend.compute.threshold import MAX_SIGMA, SUPPORTED_METHODS, ThresholdSettings

SUMMARY = "Object Summary"
LABELS = "Object Labels"
OBJECT_KINDS = (SUMMARY, LABELS)
LABEL_DTYPES = ("<u4", "<u8")
_HEAD = 4  # hysteresis flag, low count, core count, pair count


@dataclass(frozen=True)
class ObjectsPipeline:
    """The thresholding every block of a labelling applies (the task's target is the block, its input the
    block's probabilities with the smoothing halo)."""

    settings: ThresholdSettings

    halo = (0, 0, 0)  # the gateway reads the halo itself: the input is what ``halo_box`` covers

    def run(self, task, workspace: dict | None = None) -> np.ndarray:
        """Pass 1 (the packed summary) or pass 2 (the block's final labels, (z, y, x, 1)) of one block."""
        box = _box(task)
        if task.kind == SUMMARY:
            return pack_summary(summarise_block((0, 0, 0), task.raw, task.start, box, task.image, self.settings))
        if task.kind == LABELS:
            if task.lookup is None:
                raise ValueError("an Object Labels task needs its block's lookup table")
            labels, count = block_labels(task.raw, task.start, box, task.image, self.settings)
            if count >= task.lookup.size:
                raise ValueError(f"the block has {count} components, its lookup table {task.lookup.size - 1}")
            return task.lookup[labels][..., None]
        raise ValueError(f"unknown result kind '{task.kind}'")

    def accepts(self, task, result: np.ndarray) -> bool:
        """Whether a worker's ``result`` is a well-formed answer to ``task`` (checked before it is used)."""
        if task.kind == LABELS:
            shape = tuple(b - a for a, b in task.target) + (1,)
            return task.lookup is not None and result.dtype == task.lookup.dtype and result.shape == shape
        try:
            unpack_summary(result, (0, 0, 0), _box(task), task.image, self.settings.method == 1)
        except ValueError:
            return False
        return True

    def fingerprint(self) -> str:
        """Digest of the settings (what every block's result depends on)."""
        header, _ = self.to_message()
        return "objects-" + hashlib.sha1(json.dumps(header, sort_keys=True).encode()).hexdigest()[:20]

    def to_message(self) -> tuple[dict, list[np.ndarray]]:
        """A JSON-able header (no arrays) that :meth:`from_message` turns back into this."""
        return {"objects": {**asdict(self.settings), "sigmas": list(self.settings.sigmas)}}, []

    @classmethod
    def from_message(cls, header: dict, arrays: list[np.ndarray]) -> ObjectsPipeline:
        """Inverse of :meth:`to_message`; ValueError for anything malformed."""
        try:
            s = header["objects"]
            sigmas = tuple(_number(v, 0.0, MAX_SIGMA) for v in s["sigmas"])
            settings = ThresholdSettings(
                method=whole_number(s["method"], 0, 3), min_size=whole_number(s["min_size"], 0, 1 << 62),
                max_size=whole_number(s["max_size"], 0, 1 << 62), high=_number(s["high"], -1e30, 1e30),
                low=_number(s["low"], -1e30, 1e30), sigmas=sigmas, channel=whole_number(s["channel"], 0, 4096),
                core_channel=whole_number(s["core_channel"], 0, 4096), relabel=s["relabel"] is True)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed objects pipeline: {str(exc)[:200]}") from None
        if arrays or len(sigmas) != 3 or settings.method not in SUPPORTED_METHODS:
            raise ValueError("malformed objects pipeline: arrays, sigmas or method")
        return cls(settings)

    def save(self, path: str) -> None:
        """Store as ``.npz`` (the JSON header, like :meth:`Pipeline.save`)."""
        header, _ = self.to_message()
        np.savez(path, header=np.frombuffer(json.dumps(header).encode(), np.uint8))


def _number(value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"number {str(value)[:40]} out of range")
    return float(value)


def _box(task) -> Box:
    return tuple(a for a, _ in task.target), tuple(b for _, b in task.target)


def pipeline_from_message(header: dict, arrays: list[np.ndarray]):
    """The pipeline a PIPELINE message or a stored file carries: a classifier's or an objects labelling's."""
    from backend.compute.pipeline import Pipeline

    if isinstance(header, dict) and "objects" in header:
        return ObjectsPipeline.from_message(header, arrays)
    return Pipeline.from_message(header, arrays)


def load_pipeline(path: str):
    """Inverse of ``save`` for either kind of pipeline."""
    with np.load(path, allow_pickle=False) as data:
        header = json.loads(data["header"].tobytes().decode())
        arrays = [data[f"a{i}"] for i in range(len(data.files) - 1)]
    return pipeline_from_message(header, arrays)


def _faces(box: Box, frame_shape: Index) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The shared faces of a block, in packing order, with their plane shapes."""
    shape = tuple(b - a for a, b in zip(*box))
    found = []
    for axis in range(3):
        plane = tuple(n for a, n in enumerate(shape) if a != axis)
        if box[0][axis] > 0:
            found.append(((axis, 0), plane))
        if box[1][axis] < frame_shape[axis]:
            found.append(((axis, 1), plane))
    return found


def pack_summary(summary: BlockSummary) -> np.ndarray:
    """A block's summary as one int64 array (counts, then per mask sizes, first voxels and faces, then pairs)."""
    masks = [summary.low] if summary.core is None else [summary.low, summary.core]
    pairs = np.zeros((0, 2), np.int64) if summary.pairs is None else summary.pairs
    parts = [np.array([summary.core is not None, summary.low.sizes.size,
                       0 if summary.core is None else summary.core.sizes.size, len(pairs)], np.int64)]
    for mask in masks:
        parts += [mask.sizes, mask.first, *(mask.faces[face].ravel() for face in sorted(mask.faces))]
    parts.append(pairs.ravel())
    return np.concatenate([np.asarray(p, np.int64) for p in parts])


def unpack_summary(packed: np.ndarray, index: Index, box: Box, frame_shape: Index, hysteresis: bool) -> BlockSummary:
    """Inverse of :func:`pack_summary` for the block ``box`` of a frame; ValueError for anything that does not
    fit (the array comes from a worker)."""
    if packed.dtype != np.int64 or packed.ndim != 1 or packed.size < _HEAD:
        raise ValueError("an objects summary is a one-dimensional int64 array")
    flag, low_count, core_count, pair_count = (int(v) for v in packed[:_HEAD])
    voxels = int(np.prod([b - a for a, b in zip(*box)]))
    if flag != hysteresis or not (0 <= low_count <= voxels and 0 <= core_count <= voxels * hysteresis
                                  and 0 <= pair_count <= voxels * hysteresis):
        raise ValueError("an objects summary with impossible counts")
    faces = _faces(box, frame_shape)
    plane_voxels = sum(int(np.prod(shape)) for _, shape in faces)
    counts = [low_count, core_count] if hysteresis else [low_count]
    if packed.size != _HEAD + sum(2 * c + plane_voxels for c in counts) + 2 * pair_count:
        raise ValueError("an objects summary of the wrong length")
    at, masks = _HEAD, []
    for count in counts:
        sizes, first = packed[at:at + count], packed[at + count:at + 2 * count]
        at += 2 * count
        if (sizes < 1).any() or int(sizes.sum()) > voxels or ((first < 0) | (first >= np.prod(frame_shape))).any():
            raise ValueError("an objects summary with impossible sizes or first voxels")
        planes = {}
        for face, shape in faces:
            plane = packed[at:at + int(np.prod(shape))]
            at += plane.size
            if ((plane < 0) | (plane > count)).any():
                raise ValueError("an objects summary with labels beyond its count on a face")
            planes[face] = plane.reshape(shape).astype(np.uint16 if count < 2 ** 16 else np.uint32)
        masks.append(MaskSummary(sizes.copy(), first.copy(), planes))
    pairs = packed[at:].reshape(pair_count, 2).copy()
    if hysteresis and ((pairs < 1) | (pairs > np.array([low_count, core_count]))).any():
        raise ValueError("an objects summary with overlap pairs beyond its counts")
    return BlockSummary(index, masks[0], masks[1] if hysteresis else None, pairs if hysteresis else None)
