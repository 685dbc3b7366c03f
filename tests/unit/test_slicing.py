"""The viewer's slicing policy without Qt: regions, blocks, prefetch, generations and cancellation."""

from concurrent.futures import Future

import numpy as np

from backend.compute.geometry import Roi
from backend.service.objects import ObjectsRequest
from viewer.slicing import PREFETCH_SLICES, SlicingPolicy, plane_roi, prefetch_roi, view_block_shape

SHAPE = (1, 64, 256, 256)  # t, z, y, x


class Handle:
    """A request handle as the gateway returns it (a future plus the blocks still pending)."""

    def __init__(self, pending: int):
        self.future: Future = Future()
        self.pending = set(range(pending))


def xy(z: int, rect=(0, 256, 0, 256)) -> Roi:
    return plane_roi((0, z, 0, 0), "y", "x", rect)


def test_views_ask_for_blocks_one_voxel_thin_along_their_normal():
    assert view_block_shape("z") == (1, 1, 128, 128)
    assert view_block_shape("y") == (1, 128, 1, 128)
    assert view_block_shape("x") == (1, 128, 128, 1)
    assert xy(5, (10, 20, 30, 40)) == Roi((0, 5, 10, 30), (1, 6, 20, 40))


def test_prefetch_follows_the_direction_of_movement_and_stays_inside():
    assert prefetch_roi(xy(5), "z", 1, SHAPE) == Roi((0, 6, 0, 0), (1, 6 + PREFETCH_SLICES, 256, 256))
    assert prefetch_roi(xy(5), "z", -1, SHAPE) == Roi((0, 3, 0, 0), (1, 5, 256, 256))
    assert prefetch_roi(xy(63), "z", 1, SHAPE) is None
    assert prefetch_roi(xy(62), "z", 1, SHAPE) == Roi((0, 63, 0, 0), (1, 64, 256, 256))
    policy = SlicingPolicy("z")
    assert policy.prefetch_for("y", xy(5), SHAPE) is None  # only along the axis being stepped through
    policy.step("z", -1)
    assert policy.prefetch_for("z", xy(5), SHAPE).start[1] == 3


def test_moving_on_makes_the_old_request_stale_and_cancels_it():
    policy = SlicingPolicy("z")
    first = policy.want("xy", "Probabilities", "z", xy(5))
    assert first.generation == 1 and first.clear and first.stale == []
    request, prefetch = Handle(4), Handle(4)
    assert policy.attach(first.slot, first.generation, request, prefetch) == []
    assert policy.want("xy", "Probabilities", "z", xy(5, (0, 128, 0, 128))) is None  # covered: nothing to do
    moved = policy.want("xy", "Probabilities", "z", xy(6))
    assert moved.generation == 2 and moved.clear and moved.stale == [request, prefetch]
    late = Handle(1)  # the old generation's request arrives after the move: cancel it, never keep it
    assert policy.attach(moved.slot, first.generation, late, None) == [late]
    assert moved.slot.request is None


def test_panning_within_the_same_plane_keeps_what_is_painted():
    policy = SlicingPolicy("z")
    first = policy.want("xy", "Probabilities", "z", xy(5, (0, 128, 0, 128)))
    first.slot.values = object()  # something painted
    wider = policy.want("xy", "Probabilities", "z", xy(5))
    assert wider.generation == 2 and not wider.clear


def test_pending_blocks_and_completion():
    policy = SlicingPolicy("z")
    a = policy.want("xy", "Probabilities", "z", xy(5))
    b = policy.want("xy", "Objects", "z", xy(5))
    request, frame = Handle(3), Future()
    policy.attach(a.slot, a.generation, request, None)
    policy.attach(b.slot, b.generation, frame, None)
    assert policy.pending_blocks() == 4 and not policy.all_done()
    request.pending.clear()
    request.future.set_result(None)
    frame.set_result(None)
    a.slot.complete = b.slot.complete = True
    assert policy.pending_blocks() == 0 and policy.all_done()
    policy.forget("Objects")
    assert b.slot.roi is None and policy.want("xy", "Objects", "z", xy(5)).generation == 2


def test_an_objects_request_in_flight_counts_the_blocks_its_parts_wait_for():
    """An Objects request is assembled from one region request per labelling block: counting it (while the
    viewer paints another layer) neither fails nor counts the parts already delivered."""
    policy = SlicingPolicy("z")
    wanted = policy.want("xy", "Objects", "z", xy(5))
    objects = ObjectsRequest(xy(5), None, blocks=3)
    parts = [Handle(1), Handle(2), Handle(1)]
    for part in parts:
        part.roi = xy(5)
        objects.watch(part)
    policy.attach(wanted.slot, wanted.generation, objects, None)
    assert policy.pending_blocks() == 4
    parts[1].pending.clear()
    parts[1].future.set_result(np.zeros(xy(5).shape + (1,), np.uint32))
    assert policy.pending_blocks() == 2


def test_a_new_classifier_asks_again_but_keeps_the_old_values_on_screen():
    policy = SlicingPolicy("z")
    first = policy.want("xy", "Probabilities", "z", xy(5))
    raw = policy.want("xy", "Raw", "z", xy(5))
    old = object()
    first.slot.values, first.slot.complete = old, True
    request = Handle(2)
    policy.attach(first.slot, first.generation, request, None)
    policy.renew(("Probabilities",))
    again = policy.want("xy", "Probabilities", "z", xy(5))
    assert again.generation == 2 and not again.clear and again.stale == [request]
    assert again.slot.values is old  # still painted until each new tile replaces its part
    assert policy.want("xy", "Probabilities", "z", xy(5)) is None  # asked once, not on every refresh
    assert policy.want("xy", "Raw", "z", xy(5)) is None and raw.generation == 1  # the raw data did not change
