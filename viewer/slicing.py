"""The viewer's slicing policy without Qt: which region each view asks for, in which blocks, what is
prefetched, and which requests are stale.

Each (view, layer kind) has a :class:`Slot` with a generation number: wanting a region the slot does
not already cover bumps the generation, and every request or block of an older generation is stale
(cancelled, never painted). Views ask for blocks one voxel thin along their normal, so a slice costs
no more than itself; the next slices along the axis the user steps through are prefetched.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from backend.compute.geometry import Roi
from backend.service.objects import ObjectsRequest

AXES = "tzyx"
TILE = 128  # side of the square blocks a view asks for, in its plane
PREFETCH_SLICES = 2  # slices ahead of the view computed in the direction of movement


def view_block_shape(normal_axis: str) -> tuple[int, int, int, int]:
    """A view's blocks (tzyx): TILE x TILE in its plane, one voxel thin along its normal and in time."""
    shape = [1, TILE, TILE, TILE]
    shape[AXES.index(normal_axis)] = 1
    return tuple(shape)


def plane_roi(position: tuple[int, ...], rows_axis: str, cols_axis: str,
              rect: tuple[int, int, int, int]) -> Roi:
    """The plane through ``position`` limited to ``rect`` = (row0, row1, col0, col1) of the view."""
    start, stop = list(position), [p + 1 for p in position]
    rows, cols = AXES.index(rows_axis), AXES.index(cols_axis)
    start[rows], stop[rows], start[cols], stop[cols] = rect
    return Roi(tuple(start), tuple(stop))


def prefetch_roi(roi: Roi, axis: str, direction: int, shape: tuple[int, ...]) -> Roi | None:
    """The next ``PREFETCH_SLICES`` slices after ``roi`` along ``axis`` in ``direction``, within ``shape``."""
    i = AXES.index(axis)
    ahead = [roi.start[i] + direction * k for k in range(1, PREFETCH_SLICES + 1)]
    ahead = [a for a in ahead if 0 <= a < shape[i]]
    if not ahead:
        return None
    start, stop = list(roi.start), list(roi.stop)
    start[i], stop[i] = min(ahead), max(ahead) + 1
    return Roi(tuple(start), tuple(stop))


@dataclass
class Slot:
    """The request currently feeding one (view, kind)."""

    generation: int = 0
    roi: Roi | None = None
    request: object = None  # a RegionRequest, or an ObjectsRequest for objects
    prefetch: object = None
    values: np.ndarray | None = None  # the plane's values, for recolouring without recomputing
    painted: np.ndarray | None = None  # which pixels of ``values`` have arrived (None: all of them)
    complete: bool = False  # every block of the current request is painted
    outdated: bool = False  # its values came from a classifier replaced since: ask again, keep showing them

    @property
    def done(self) -> bool:
        """Nothing wanted, or everything wanted is painted."""
        return self.roi is None or self.complete


@dataclass
class Wanted:
    """A new request to make: for ``slot`` at ``generation``; ``clear`` if the old values are of another plane."""

    slot: Slot
    generation: int
    clear: bool
    stale: list = field(default_factory=list)  # handles of the previous generation, to cancel


class SlicingPolicy:
    """The slots of every view, the direction of movement, and the rules above."""

    def __init__(self, first_axis: str):
        self.slots: dict[tuple[str, str], Slot] = {}
        self.direction = dict.fromkeys(AXES, 1)
        self.moving_axis = first_axis  # prefetch only along the axis the user steps through

    def step(self, axis: str, delta: int) -> None:
        """Remember the axis and direction of a step, for prefetching."""
        if delta:
            self.direction[axis] = 1 if delta > 0 else -1
            self.moving_axis = axis

    def want(self, plane: str, kind: str, normal_axis: str, roi: Roi) -> Wanted | None:
        """What to request so that (plane, kind) shows ``roi``; None if its current request covers it."""
        slot = self.slots.setdefault((plane, kind), Slot())
        normal = AXES.index(normal_axis)
        same_plane = slot.roi is not None and slot.roi.start[normal] == roi.start[normal] \
            and slot.roi.start[0] == roi.start[0]
        if slot.roi is not None and slot.roi.contains(roi) and same_plane and not slot.outdated:
            return None
        stale = self.release(slot)
        slot.generation += 1  # blocks of the outdated request are never painted after the new ones
        clear = not same_plane or slot.values is None
        if clear:
            slot.values = slot.painted = None
        slot.roi, slot.complete, slot.outdated = roi, False, False
        return Wanted(slot, slot.generation, clear, stale)

    def prefetch_for(self, normal_axis: str, roi: Roi, shape: tuple[int, ...]) -> Roi | None:
        """The region to prefetch after showing ``roi`` in a view with this normal, if any."""
        if normal_axis != self.moving_axis:
            return None
        return prefetch_roi(roi, normal_axis, self.direction[normal_axis], shape)

    @staticmethod
    def attach(slot: Slot, generation: int, request, prefetch) -> list:
        """Keep the handles of the current generation; returns the stale ones to cancel."""
        if generation != slot.generation:
            return [h for h in (request, prefetch) if h is not None]
        slot.request, slot.prefetch = request, prefetch
        return []

    @staticmethod
    def release(slot: Slot) -> list:
        """Forget the slot's handles; returns them, to cancel."""
        handles = [h for h in (slot.request, slot.prefetch) if h is not None]
        slot.request = slot.prefetch = None
        return handles

    def forget(self, kind: str) -> None:
        """Make every slot of ``kind`` ask again (other parameters, another channel)."""
        for (_, slot_kind), slot in self.slots.items():
            if slot_kind == kind:
                slot.roi = None

    def renew(self, kinds: tuple[str, ...]) -> None:
        """Make every slot of ``kinds`` ask again for the same region while it keeps showing its values
        (a new classifier: each new tile replaces an old one, the view never goes blank)."""
        for (_, slot_kind), slot in self.slots.items():
            if slot_kind in kinds:
                slot.outdated = True

    def pending_blocks(self) -> int:
        """Blocks the visible views still wait for."""
        count = 0
        for slot in self.slots.values():
            request = slot.request
            if isinstance(request, Future):
                count += not request.done()
            elif request is not None and not request.future.done():
                count += _blocks_left(request)
        return count

    def all_done(self) -> bool:
        """True when every slot shows everything it asked for."""
        return all(slot.done for slot in self.slots.values())


def _blocks_left(request) -> int:
    """The blocks a region request still waits for; an Objects request counts those of its parts (it is
    assembled from one region request per labelling block)."""
    if isinstance(request, ObjectsRequest):
        return sum(len(part.pending) for part in list(request.parts) if not part.future.done())
    return len(request.pending)
