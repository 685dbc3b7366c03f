"""The pure parts of labelling one frame's objects block by block, with the IDs ``threshold_frame`` gives.

A block is smoothed from its probabilities plus a halo exactly as the whole frame is (the halo is
cropped away, so the values are bit for bit the same), thresholded and labelled on its own. Its
:class:`BlockSummary` keeps per local component the size and the frame raster index of its first
voxel, and the local labels on the faces it shares with other blocks (direct neighbourhood: faces
only). :class:`FrameMerge` joins the components across faces as summaries arrive (a pair of faces is
reduced to its label pairs as soon as both blocks are in), and :meth:`FrameMerge.finish` turns the
graph into ilastik's IDs: a component's rank in raster order of first voxels among all components
(or among the kept ones with ``relabel``), after the size filter and, in hysteresis mode, the cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from backend.compute.filters import Patch, gaussian_kernel, kernel_radius
from backend.compute.threshold import SMOOTHING_WINDOW, ThresholdSettings, check_channels, label_components

Index = tuple[int, int, int]
Box = tuple[Index, Index]

# 64 x 256 x 256 (or one 2048 x 2048 slice in 2D) is 4 Mi voxels, 16 MB of float32 per channel. A block
# in flight holds its probabilities with halo, up to three float32 copies per used channel while
# smoothing, the mask and the int32 labels: about 200 MB with 4 channels and sigma 3.5. Two threads and
# one block waiting stay well under 2 GB, and a 512 x 2048 x 2048 frame is 512 blocks.
BLOCK_SHAPE_3D = (64, 256, 256)
BLOCK_SHAPE_2D = (1, 2048, 2048)
UINT32_LIMIT = int(np.iinfo(np.uint32).max)


def default_block_shape(frame_shape: Index) -> Index:
    """The block shape used when none is given: ~4 Mi voxels, slices of a 2D frame."""
    return BLOCK_SHAPE_2D if frame_shape[0] == 1 else BLOCK_SHAPE_3D


def block_boxes(frame_shape: Index, block_shape: Index) -> dict[Index, Box]:
    """The blocks tiling the frame, by grid index: ``(start, stop)`` boxes, the last ones clipped."""
    if len(block_shape) != 3 or min(block_shape) < 1:
        raise ValueError(f"block shape {tuple(block_shape)} must be three positive sizes (z, y, x)")
    counts = [-(-n // b) for n, b in zip(frame_shape, block_shape)]
    boxes = {}
    for index in np.ndindex(*counts):
        start = tuple(i * b for i, b in zip(index, block_shape))
        stop = tuple(min(s + b, n) for s, b, n in zip(start, block_shape, frame_shape))
        boxes[tuple(int(i) for i in index)] = (start, stop)
    return boxes


def _smoothed_axes(frame_shape: Index, sigmas: tuple[float, float, float]) -> tuple[int, ...]:
    if min(sigmas) < 0.1:
        return ()
    return (0, 1, 2) if frame_shape[0] > 1 else (1, 2)


def smoothing_halo(frame_shape: Index, sigmas: tuple[float, float, float]) -> Index:
    """Voxels a block must be read beyond its box on each side, per axis, to be smoothed like the frame."""
    axes = _smoothed_axes(frame_shape, sigmas)
    return tuple(kernel_radius(float(sigmas[a]), SMOOTHING_WINDOW) if a in axes else 0 for a in range(3))


def halo_box(box: Box, halo: Index, frame_shape: Index) -> Box:
    """The box grown by the halo, clipped to the frame."""
    start, stop = box
    return (tuple(max(0, s - h) for s, h in zip(start, halo)),
            tuple(min(n, s + h) for s, h, n in zip(stop, halo, frame_shape)))


def block_inputs(data: np.ndarray, data_start: Index, box: Box, frame_shape: Index,
                 settings: ThresholdSettings) -> tuple[np.ndarray, np.ndarray | None]:
    """The block's smoothed low-threshold input and, in hysteresis mode, its core input (as the frame's).

    ``data`` is the (z, y, x, channels) float32 probabilities of ``halo_box(box, ...)`` starting at
    ``data_start``.
    """
    check_channels(data.shape[-1], settings)
    axes = _smoothed_axes(frame_shape, settings.sigmas)
    kernels = {a: gaussian_kernel(float(settings.sigmas[a]), 0, SMOOTHING_WINDOW) for a in axes}
    target = tuple(zip(*box))

    def smoothed(channel: int) -> np.ndarray:
        patch = Patch(np.ascontiguousarray(data[..., channel], np.float32), tuple(data_start), tuple(frame_shape))
        return np.ascontiguousarray(patch.separable(kernels, target).data)

    final_input = smoothed(settings.channel)
    if settings.method != 1:
        return final_input, None
    if settings.core_channel == settings.channel:
        return final_input, final_input
    core_input = smoothed(settings.core_channel)
    return final_input + core_input, core_input  # lazyflow's opSumInputs, as threshold_frame


def block_labels(data: np.ndarray, data_start: Index, box: Box, frame_shape: Index,
                 settings: ThresholdSettings) -> tuple[np.ndarray, int]:
    """The block's local labels of the low-threshold mask and their count (deterministic: pass 2 redoes them)."""
    final_input, _ = block_inputs(data, data_start, box, frame_shape, settings)
    return label_components(final_input >= settings.low)


@dataclass
class MaskSummary:
    """What the merge needs of one block's labelled mask (local label ``k`` is entry ``k - 1``)."""

    sizes: np.ndarray  # int64 voxels per local component
    first: np.ndarray  # int64 frame raster index (z * Y * X + y * X + x) of each component's first voxel
    faces: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (axis, 0 low | 1 high) -> labels


@dataclass
class BlockSummary:
    """One block's pass-1 result: its low mask, its core mask and their (low, core) overlaps in hysteresis."""

    index: Index
    low: MaskSummary
    core: MaskSummary | None = None
    pairs: np.ndarray | None = None  # (n, 2) int64 local (low label, core label) that share a voxel


def summarise_mask(labels: np.ndarray, count: int, box: Box, frame_shape: Index) -> MaskSummary:
    """Sizes, first voxels and shared faces of a block's local labels (numbered in the block's raster order)."""
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    values = flat[where]
    sizes = np.bincount(values, minlength=count + 1)[1:].astype(np.int64)
    new = np.ones(values.size, bool)  # the first voxel of a label: it exceeds every label before it
    new[1:] = values[1:] > np.maximum.accumulate(values)[:-1]
    local = np.unravel_index(where[new], labels.shape)
    (z0, y0, x0), (_, ny, nx) = box[0], frame_shape
    first = ((local[0] + np.int64(z0)) * ny + (local[1] + y0)) * nx + (local[2] + x0)
    plane_type = np.uint16 if count < 2 ** 16 else np.uint32
    faces = {}
    for axis in range(3):
        if box[0][axis] > 0:
            faces[(axis, 0)] = np.take(labels, 0, axis=axis).astype(plane_type)
        if box[1][axis] < frame_shape[axis]:
            faces[(axis, 1)] = np.take(labels, -1, axis=axis).astype(plane_type)
    return MaskSummary(sizes, first.astype(np.int64), faces)


def summarise_block(index: Index, data: np.ndarray, data_start: Index, box: Box, frame_shape: Index,
                    settings: ThresholdSettings) -> BlockSummary:
    """Pass 1 of a block: smooth, threshold, label locally and keep only the summary."""
    final_input, core_input = block_inputs(data, data_start, box, frame_shape, settings)
    labels, count = label_components(final_input >= settings.low)
    low = summarise_mask(labels, count, box, frame_shape)
    if core_input is None:
        return BlockSummary(index, low)
    core_labels, core_count = label_components(core_input >= settings.high)
    core = summarise_mask(core_labels, core_count, box, frame_shape)
    return BlockSummary(index, low, core, _label_pairs(labels, core_labels, core_count))


def _label_pairs(a: np.ndarray, b: np.ndarray, b_count: int) -> np.ndarray:
    """The distinct (a, b) label pairs at voxels where both are labelled, as (n, 2) int64."""
    both = (a != 0) & (b != 0)
    keys = np.unique(a[both].astype(np.int64) * (b_count + 1) + b[both])
    return np.stack([keys // (b_count + 1), keys % (b_count + 1)], axis=1)


class ComponentGraph:
    """The components of one mask over all blocks: local components are nodes, shared faces join them."""

    def __init__(self) -> None:
        self.node_count = 0
        self.offsets: dict[Index, tuple[int, int]] = {}  # block -> (first node, local count)
        self._sizes: list[np.ndarray] = []
        self._first: list[np.ndarray] = []
        self._edges: list[np.ndarray] = []
        self._waiting: dict[tuple[Index, int, int], np.ndarray] = {}  # faces whose neighbour is not in yet

    def add(self, index: Index, summary: MaskSummary) -> int:
        """Take a block's summary; returns the node number of its local label 1."""
        offset, count = self.node_count, summary.sizes.size
        self.offsets[index] = (offset, count)
        self.node_count += count
        self._sizes.append(summary.sizes)
        self._first.append(summary.first)
        for (axis, side), plane in summary.faces.items():
            neighbour = tuple(i + (1 if side else -1) * (a == axis) for a, i in enumerate(index))
            if neighbour in self.offsets:
                other = self._waiting.pop((neighbour, axis, 1 - side))
                self._join(plane, offset, other, self.offsets[neighbour][0])
            else:
                self._waiting[(index, axis, side)] = plane
        return offset

    def _join(self, a: np.ndarray, a_offset: int, b: np.ndarray, b_offset: int) -> None:
        pairs = _label_pairs(a, b, int(b.max(initial=0)))
        if pairs.size:
            self._edges.append(pairs + np.array([a_offset - 1, b_offset - 1]))

    def components(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per node its component; per component its size and first voxel (frame raster index)."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        if self._waiting:
            raise RuntimeError(f"{len(self._waiting)} block faces were never joined (blocks missing)")
        n = self.node_count
        edges = np.concatenate(self._edges) if self._edges else np.zeros((0, 2), np.int64)
        graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
        count, component = connected_components(graph, directed=False)
        sizes = np.zeros(count, np.int64)
        np.add.at(sizes, component, np.concatenate(self._sizes) if n else np.zeros(0, np.int64))
        first = np.full(count, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(first, component, np.concatenate(self._first) if n else np.zeros(0, np.int64))
        return component, sizes, first


def label_dtype(max_id: int) -> np.dtype:
    """uint32, or uint64 when the highest ID does not fit in uint32."""
    return np.dtype(np.uint32) if max_id <= UINT32_LIMIT else np.dtype(np.uint64)


@dataclass(frozen=True)
class FrameIds:
    """The final ID of every block's local labels."""

    max_id: int
    object_count: int
    dtype: np.dtype
    offsets: dict[Index, tuple[int, int]]
    node_ids: np.ndarray  # final ID (0 = dropped) per node, in ``dtype``

    def lookup(self, index: Index) -> np.ndarray:
        """The table from block ``index``'s local labels (0 included) to final IDs."""
        offset, count = self.offsets[index]
        return np.concatenate([np.zeros(1, self.dtype), self.node_ids[offset:offset + count]])


def _kept_by_size(sizes: np.ndarray, settings: ThresholdSettings) -> np.ndarray:
    return (sizes >= settings.min_size) & (sizes <= settings.max_size)


class FrameMerge:
    """Block summaries joined into the frame's components, in any order of arrival."""

    def __init__(self, hysteresis: bool) -> None:
        self.low = ComponentGraph()
        self.core = ComponentGraph() if hysteresis else None
        self._pairs: list[np.ndarray] = []  # (low node, core node)

    def add(self, summary: BlockSummary) -> None:
        """Take one block's pass-1 summary (its faces are joined to the neighbours already in)."""
        low_offset = self.low.add(summary.index, summary.low)
        if self.core is not None:
            core_offset = self.core.add(summary.index, summary.core)
            if summary.pairs.size:
                self._pairs.append(summary.pairs + np.array([low_offset - 1, core_offset - 1]))

    def finish(self, settings: ThresholdSettings) -> FrameIds:
        """ilastik's IDs (or consecutive ones with ``relabel``) for every block's local labels."""
        component, sizes, first = self.low.components()
        keep = _kept_by_size(sizes, settings)
        if self.core is not None:
            core_component, core_sizes, _ = self.core.components()
            pairs = np.concatenate(self._pairs) if self._pairs else np.zeros((0, 2), np.int64)
            seeded = np.zeros(keep.size, bool)
            core_kept = _kept_by_size(core_sizes, settings)[core_component[pairs[:, 1]]]
            seeded[component[pairs[core_kept, 0]]] = True
            keep &= seeded
        order = np.argsort(first, kind="stable")  # raster order of first voxels (all distinct)
        ids = np.zeros(keep.size, np.int64)
        if settings.relabel:
            kept_in_order = order[keep[order]]
            ids[kept_in_order] = np.arange(1, kept_in_order.size + 1)
        else:
            ids[order] = np.arange(1, order.size + 1)
            ids[~keep] = 0
        max_id = int(ids.max(initial=0))
        dtype = label_dtype(max_id)
        return FrameIds(max_id, int(keep.sum()), dtype, dict(self.low.offsets), ids[component].astype(dtype))
