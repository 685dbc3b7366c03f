"""Labels painted by the user: sparse blocks of 40^3 voxels (as ilastik stores them), brush strokes with
undo and redo, and the blocks each stroke touched (what live training must look at again).

A stroke is the brush swept along the segments between the mouse's points: every voxel of the view's plane
within the brush's radius of a segment is painted, so a fast drag leaves no gap. It can be painted all at
once (:meth:`LabelStore.stroke`) or point by point while the mouse moves (``begin_stroke``, ``stroke_to``,
``end_stroke``); either way it is one undo step.

Label values are class numbers from 1; 0 means unlabelled (and is what the eraser paints).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from backend.compute.geometry import BlockGrid, Roi

LABEL_BLOCK = (1, 40, 40, 40)  # tzyx, as ilastik's label cache blocks
AXES = "tzyx"
EXACT_SPAN = 20_000  # segments spanning fewer pixels (plus the radius) are rasterised in exact integers


class LabelStore:
    """The labels of one image of spatial shape ``(t, z, y, x)``, kept only where something was painted;
    the last ``undo_steps`` strokes can be undone (each step keeps a copy of the blocks it touched)."""

    def __init__(self, shape: tuple[int, int, int, int], undo_steps: int = 100):
        self.grid = BlockGrid(shape, LABEL_BLOCK, (0, 0, 0, 0))
        self.blocks: dict[tuple[int, ...], np.ndarray] = {}
        self._undo: deque[dict[tuple[int, ...], np.ndarray | None]] = deque(maxlen=undo_steps)
        self._redo: deque[dict[tuple[int, ...], np.ndarray | None]] = deque(maxlen=undo_steps)
        self._open: _Stroke | None = None

    @classmethod
    def from_blocks(cls, shape: tuple[int, int, int, int], blocks: Iterable[tuple[Roi, np.ndarray]],
                    undo_steps: int = 100) -> LabelStore:
        """A store holding labels read from a project (tzyx ROI and labels shaped like it)."""
        store = cls(shape, undo_steps)
        for roi, labels in blocks:
            roi = roi.intersect(store.grid.image)
            if roi is not None:
                store._write(roi, labels[tuple(slice(0, s) for s in roi.shape)])
        store._undo.clear()
        return store

    def stroke(self, position: tuple[int, int, int, int], rows_axis: str, cols_axis: str,
               points: Iterable[tuple[int, int]], radius: int, label: int) -> set[tuple[int, ...]]:
        """Paint the line through ``points`` (row, column) of the plane through ``position`` with a brush of
        ``radius``; ``label`` 0 erases. One undo step; returns the indices of the blocks whose labels changed."""
        self.begin_stroke(position, rows_axis, cols_axis, radius, label)
        for row, col in points:
            self.stroke_to(row, col)
        return self.end_stroke()

    def begin_stroke(self, position: tuple[int, int, int, int], rows_axis: str, cols_axis: str, radius: int,
                     label: int) -> None:
        """Start a stroke in the plane through ``position`` (a view's rows and columns axes): painted point by
        point with :meth:`stroke_to`, one undo step once :meth:`end_stroke` ends it (as does the next stroke,
        an undo, a redo or a class removal, should it not have ended)."""
        self.end_stroke()
        self._open = _Stroke(tuple(int(p) for p in position), rows_axis, cols_axis, radius, label)

    def stroke_to(self, row: int, col: int) -> Roi | None:
        """Paint every voxel within the brush's radius of the segment from the stroke's last point to (``row``,
        ``col``) (a disc at the stroke's first point); the ROI painted in, None outside the image or when no
        stroke was begun."""
        stroke = self._open
        if stroke is None:
            return None
        start, stop = stroke.last or (row, col), (row, col)
        stroke.last = stop
        box = stroke.box(start, stop).intersect(self.grid.image)
        if box is None:
            return None
        for block in self.grid.blocks_in(box):
            part = box.intersect(block.roi)
            labels = self.blocks.get(block.index)
            if block.index not in stroke.before:
                stroke.before[block.index] = None if labels is None else labels.copy()
            if labels is None:
                if stroke.label == 0:
                    continue
                labels = self.blocks[block.index] = np.zeros(block.roi.shape, np.uint8)
            labels[part.relative_to(block.roi)][stroke.swept(part, start, stop)] = stroke.label
        return box

    def end_stroke(self) -> set[tuple[int, ...]]:
        """End the stroke begun last: it becomes one undo step; returns the blocks whose labels it changed
        (none when no stroke was open)."""
        stroke, self._open = self._open, None
        if stroke is None:
            return set()
        changed = {i for i, old in stroke.before.items() if not _same(old, self.blocks.get(i))}
        if changed:
            self._undo.append({i: stroke.before[i] for i in changed})
            self._redo.clear()
        return changed

    def _write(self, roi: Roi, labels: np.ndarray) -> None:
        for block in self.grid.blocks_in(roi):
            part = roi.intersect(block.roi)
            target = self.blocks.setdefault(block.index, np.zeros(block.roi.shape, np.uint8))
            target[part.relative_to(block.roi)] = labels[part.relative_to(roi)]

    def undo(self) -> set[tuple[int, ...]]:
        """Take back the last stroke; returns the blocks it changes."""
        return self._swap(self._undo, self._redo)

    def redo(self) -> set[tuple[int, ...]]:
        """Paint the last undone stroke again; returns the blocks it changes."""
        return self._swap(self._redo, self._undo)

    def _swap(self, source: deque, target: deque) -> set[tuple[int, ...]]:
        self.end_stroke()
        if not source:
            return set()
        step = source.pop()
        target.append({i: (None if self.blocks.get(i) is None else self.blocks[i].copy()) for i in step})
        for index, labels in step.items():
            if labels is None:
                self.blocks.pop(index, None)
            else:
                self.blocks[index] = labels
        return set(step)

    def remove_class(self, label: int) -> set[tuple[int, ...]]:
        """Erase class ``label`` and number the classes above it one lower; returns the blocks changed.
        Strokes painted before can no longer be undone (they would bring back the old numbers)."""
        self.end_stroke()
        changed = set()
        for index, labels in self.blocks.items():
            if (labels >= label).any():
                labels[labels == label] = 0
                labels[labels > label] -= 1
                changed.add(index)
        self._undo.clear()
        self._redo.clear()
        return changed

    def region(self, roi: Roi) -> np.ndarray:
        """The labels over ``roi`` (tzyx), zero where nothing was painted."""
        out = np.zeros(roi.shape, np.uint8)
        for block in self.grid.blocks_in(roi):
            labels = self.blocks.get(block.index)
            if labels is not None:
                part = roi.intersect(block.roi)
                out[part.relative_to(roi)] = labels[part.relative_to(block.roi)]
        return out

    def labelled(self) -> Iterator[tuple[tuple[int, ...], Roi, np.ndarray]]:
        """Every block holding at least one label: index, ROI and labels."""
        for index in sorted(self.blocks):
            labels = self.blocks[index]
            if labels.any():
                yield index, self.grid.block(index).roi, labels


@dataclass
class _Stroke:
    """A stroke being painted: its plane and brush, its last point, and the labels of the blocks it touched
    as they were before it."""

    position: tuple[int, ...]
    rows_axis: str
    cols_axis: str
    radius: int
    label: int
    last: tuple[int, int] | None = None
    before: dict[tuple[int, ...], np.ndarray | None] = field(default_factory=dict)

    def box(self, start: tuple[int, int], stop: tuple[int, int]) -> Roi:
        """The bounding box (tzyx) of the brush swept from ``start`` to ``stop``."""
        low, high = list(self.position), [p + 1 for p in self.position]
        for axis, ends in ((self.rows_axis, (start[0], stop[0])), (self.cols_axis, (start[1], stop[1]))):
            low[AXES.index(axis)], high[AXES.index(axis)] = min(ends) - self.radius, max(ends) + self.radius + 1
        return Roi(tuple(low), tuple(high))

    def swept(self, part: Roi, start: tuple[int, int], stop: tuple[int, int]) -> np.ndarray:
        """The voxels of ``part`` (a mask shaped like it) within the radius of the segment ``start``-``stop``."""
        r, c = AXES.index(self.rows_axis), AXES.index(self.cols_axis)
        rows = np.arange(part.start[r], part.stop[r], dtype=np.int64)[:, None]
        cols = np.arange(part.start[c], part.stop[c], dtype=np.int64)[None, :]
        mask = _near_segment(rows, cols, start, stop, self.radius)
        return (mask if r < c else mask.T).reshape(part.shape)


def _near_segment(rows: np.ndarray, cols: np.ndarray, start: tuple[int, int], stop: tuple[int, int],
                  radius: int) -> np.ndarray:
    """Which pixels of the grid ``rows`` x ``cols`` are at most ``radius`` from the segment ``start``-``stop``
    (the union of the discs centred anywhere on it); radius 0 reaches half a pixel, so that a line of the
    one-pixel brush stays connected."""
    (r0, c0), (r1, c1) = start, stop
    dr, dc = r1 - r0, c1 - c0
    kind = np.int64 if abs(dr) + abs(dc) + radius < EXACT_SPAN else np.float64  # int64 squares would overflow
    wr, wc = (rows - r0).astype(kind), (cols - c0).astype(kind)
    width2 = max(2 * radius, 1) ** 2  # the brush's diameter, squared: distances are compared doubled
    length2, along = dr * dr + dc * dc, wr * dr + wc * dc
    near_start = 4 * (wr * wr + wc * wc) <= width2
    if length2 == 0:
        return near_start
    near_stop = 4 * ((wr - dr) ** 2 + (wc - dc) ** 2) <= width2
    near_line = 4 * (wr * dc - wc * dr) ** 2 <= width2 * length2  # (doubled distance to the line * length)^2
    return np.where(along <= 0, near_start, np.where(along >= length2, near_stop, near_line))


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return (a is None or not a.any()) and (b is None or not b.any())
    return np.array_equal(a, b)
