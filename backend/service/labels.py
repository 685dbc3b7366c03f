"""Labels painted by the user: sparse blocks of 40^3 voxels (as ilastik stores them), brush strokes with
undo and redo, and the blocks each stroke touched (what live training must look at again).

Label values are class numbers from 1; 0 means unlabelled (and is what the eraser paints).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

from backend.compute.geometry import BlockGrid, Roi

LABEL_BLOCK = (1, 40, 40, 40)  # tzyx, as ilastik's label cache blocks


class LabelStore:
    """The labels of one image of spatial shape ``(t, z, y, x)``, kept only where something was painted;
    the last ``undo_steps`` strokes can be undone (each step keeps a copy of the blocks it touched)."""

    def __init__(self, shape: tuple[int, int, int, int], undo_steps: int = 100):
        self.grid = BlockGrid(shape, LABEL_BLOCK, (0, 0, 0, 0))
        self.blocks: dict[tuple[int, ...], np.ndarray] = {}
        self._undo: deque[dict[tuple[int, ...], np.ndarray | None]] = deque(maxlen=undo_steps)
        self._redo: deque[dict[tuple[int, ...], np.ndarray | None]] = deque(maxlen=undo_steps)

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
        """Paint discs of ``radius`` at ``points`` (row, column) of the plane through ``position``; ``label``
        0 erases. One undo step; returns the indices of the blocks whose labels changed."""
        before: dict[tuple[int, ...], np.ndarray | None] = {}
        for row, col in points:
            for index, roi, mask in self._disc(position, rows_axis, cols_axis, row, col, radius):
                block = self.blocks.get(index)
                if index not in before:
                    before[index] = None if block is None else block.copy()
                if block is None:
                    if label == 0:
                        continue
                    block = self.blocks[index] = np.zeros(self.grid.block(index).roi.shape, np.uint8)
                block[roi.relative_to(self.grid.block(index).roi)][mask] = label
        changed = {i for i, old in before.items() if not _same(old, self.blocks.get(i))}
        if changed:
            self._undo.append({i: before[i] for i in changed})
            self._redo.clear()
        return changed

    def _disc(self, position, rows_axis, cols_axis, row, col, radius) -> Iterator[tuple[tuple, Roi, np.ndarray]]:
        """Per block: its index, the disc's bounding box in it and the disc's mask over that box."""
        axes = "tzyx"
        r, c = axes.index(rows_axis), axes.index(cols_axis)
        start, stop = [int(p) for p in position], [int(p) + 1 for p in position]
        start[r], stop[r] = row - radius, row + radius + 1
        start[c], stop[c] = col - radius, col + radius + 1
        box = Roi(tuple(start), tuple(stop)).intersect(self.grid.image)
        if box is None:
            return
        for block in self.grid.blocks_in(box):
            part = box.intersect(block.roi)
            rows = np.arange(part.start[r], part.stop[r])[:, None] - row
            cols = np.arange(part.start[c], part.stop[c])[None, :] - col
            disc = rows**2 + cols**2 <= radius**2
            yield block.index, part, disc.reshape(part.shape)

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


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return (a is None or not a.any()) and (b is None or not b.any())
    return np.array_equal(a, b)
