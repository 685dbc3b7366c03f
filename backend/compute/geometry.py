"""One region type for the whole program: ROIs, block grids and halos over N-d arrays.

Coordinates are half-open ``[start, stop)`` per axis, always in the global frame of the image.
Every conversion between global and block-local coordinates happens here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Roi:
    """A half-open box ``[start, stop)`` in global coordinates."""

    start: tuple[int, ...]
    stop: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", tuple(int(v) for v in self.start))
        object.__setattr__(self, "stop", tuple(int(v) for v in self.stop))
        if len(self.start) != len(self.stop):
            raise ValueError(f"start {self.start} and stop {self.stop} differ in length")
        if any(b < a for a, b in zip(self.start, self.stop)):
            raise ValueError(f"empty or inverted ROI {self.start}..{self.stop}")

    @classmethod
    def from_shape(cls, shape: Sequence[int]) -> Roi:
        """The ROI covering a whole array of this shape."""
        return cls((0,) * len(shape), tuple(shape))

    @property
    def ndim(self) -> int:
        return len(self.start)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop))

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def slices(self) -> tuple[slice, ...]:
        """Slices selecting this ROI from an array in the global frame."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    def relative_to(self, outer: Roi) -> tuple[slice, ...]:
        """Slices selecting this ROI from an array that covers ``outer``."""
        if not outer.contains(self):
            raise ValueError(f"{self} is not inside {outer}")
        return tuple(slice(a - o, b - o) for a, b, o in zip(self.start, self.stop, outer.start))

    def contains(self, other: Roi) -> bool:
        """True if ``other`` lies entirely inside this ROI."""
        return all(a <= c and d <= b for a, b, c, d in zip(self.start, self.stop, other.start, other.stop))

    def intersect(self, other: Roi) -> Roi | None:
        """The common part of two ROIs, or None if they do not overlap."""
        start = tuple(max(a, c) for a, c in zip(self.start, other.start))
        stop = tuple(min(b, d) for b, d in zip(self.stop, other.stop))
        if any(b <= a for a, b in zip(start, stop)):
            return None
        return Roi(start, stop)

    def grow(self, halo: Sequence[int], within: Roi) -> Roi:
        """This ROI enlarged by ``halo`` per side, clipped to ``within`` (the image)."""
        start = tuple(max(a - h, w) for a, h, w in zip(self.start, halo, within.start))
        stop = tuple(min(b + h, w) for b, h, w in zip(self.stop, halo, within.stop))
        return Roi(start, stop)

    def shift(self, offset: Sequence[int]) -> Roi:
        """This ROI moved by ``offset``."""
        return Roi(
            tuple(a + o for a, o in zip(self.start, offset)),
            tuple(b + o for b, o in zip(self.stop, offset)),
        )

    def to_list(self) -> list[list[int]]:
        """A JSON-friendly form: ``[start, stop]``."""
        return [list(self.start), list(self.stop)]

    @classmethod
    def from_list(cls, value: Sequence[Sequence[int]]) -> Roi:
        """Inverse of :meth:`to_list`."""
        return cls(tuple(value[0]), tuple(value[1]))


@dataclass(frozen=True)
class Block:
    """One cell of a :class:`BlockGrid`: its index, its core ROI and the ROI read with its halo."""

    index: tuple[int, ...]
    roi: Roi
    halo_roi: Roi


@dataclass(frozen=True)
class BlockGrid:
    """A regular grid of blocks over an image; edge blocks are cut at the image border."""

    shape: tuple[int, ...]
    block_shape: tuple[int, ...]
    halo: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        object.__setattr__(
            self, "block_shape", tuple(max(1, min(int(b), s)) for b, s in zip(self.block_shape, self.shape))
        )
        object.__setattr__(self, "halo", tuple(int(v) for v in self.halo))
        if not len(self.shape) == len(self.block_shape) == len(self.halo):
            raise ValueError("shape, block_shape and halo must have the same length")

    @property
    def image(self) -> Roi:
        return Roi.from_shape(self.shape)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(-(-s // b) for s, b in zip(self.shape, self.block_shape))

    def __len__(self) -> int:
        n = 1
        for g in self.grid_shape:
            n *= g
        return n

    def block(self, index: Sequence[int]) -> Block:
        """The block at grid position ``index``."""
        start = tuple(i * b for i, b in zip(index, self.block_shape))
        stop = tuple(min(a + b, s) for a, b, s in zip(start, self.block_shape, self.shape))
        roi = Roi(start, stop)
        return Block(tuple(index), roi, roi.grow(self.halo, self.image))

    def __iter__(self) -> Iterator[Block]:
        for index in _product([range(g) for g in self.grid_shape]):
            yield self.block(index)

    def blocks_in(self, roi: Roi, reverse: bool = False) -> Iterator[Block]:
        """The blocks that overlap ``roi``, in grid order (last first if ``reverse``), one at a time."""
        ranges = self._ranges(roi)
        for index in _product([r[::-1] for r in ranges] if reverse else ranges):
            yield self.block(index)

    def count_in(self, roi: Roi) -> int:
        """How many blocks overlap ``roi`` (without listing them)."""
        n = 1
        for r in self._ranges(roi):
            n *= len(r)
        return n

    def _ranges(self, roi: Roi) -> list[range]:
        return [range(a // b, -(-e // b)) for a, e, b in zip(roi.start, roi.stop, self.block_shape)]


def _product(ranges: Sequence[range]) -> Iterator[tuple[int, ...]]:
    """``itertools.product`` of ranges without copying them into tuples first (a grid may have millions of rows)."""
    if not ranges:
        yield ()
        return
    for first in ranges[0]:
        for rest in _product(ranges[1:]):
            yield (first, *rest)
