"""Brush strokes in the label store: the brush swept along the segments between the mouse's points (no gap
at any size or speed), in every view's plane, the eraser, the blocks a stroke changed, one undo step each."""

import numpy as np
import pytest
from scipy import ndimage

from backend.compute.geometry import Roi
from backend.service.labels import LabelStore

SHAPE = (1, 3, 120, 130)  # t, z, y, x: blocks of 40 split y and x into 3 and 4


def xy_plane(store: LabelStore, z: int = 1) -> np.ndarray:
    return store.region(Roi((0, z, 0, 0), (1, z + 1, SHAPE[2], SHAPE[3])))[0, 0]


def fine_union(shape: tuple[int, int], points: list[tuple[int, int]], radius: float) -> np.ndarray:
    """The union of discs of ``radius`` centred every 1/50 pixel along the polyline through ``points``."""
    union = np.zeros(shape, bool)
    reach = int(np.ceil(radius))
    for (r0, c0), (r1, c1) in zip(points, points[1:] or points):
        for t in np.linspace(0, 1, 50 * (abs(r1 - r0) + abs(c1 - c0)) + 2):
            centre = np.array([r0 + t * (r1 - r0), c0 + t * (c1 - c0)])
            low = np.maximum(np.floor(centre).astype(int) - reach, 0)
            high = np.minimum(np.ceil(centre).astype(int) + reach + 1, shape)
            if (low >= high).any():
                continue
            rows, cols = np.mgrid[low[0]:high[0], low[1]:high[1]]
            union[low[0]:high[0], low[1]:high[1]] |= (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2
    return union


@pytest.mark.parametrize("radius", [1, 3, 5])
def test_a_fast_diagonal_drag_leaves_no_gap(radius):
    """Two mouse events far apart (a fast drag) painted two discs and nothing between them."""
    store = LabelStore(SHAPE)
    store.stroke((0, 1, 0, 0), "y", "x", [(10, 10), (100, 90)], radius, 1)
    painted = xy_plane(store) == 1
    _, pieces = ndimage.label(painted)
    assert pieces == 1, f"the stroke fell into {pieces} pieces"
    for t in np.linspace(0, 1, 500):  # every pixel the segment crosses is painted
        assert painted[round(10 + 90 * t), round(10 + 80 * t)]


def test_the_one_pixel_brush_draws_a_thin_line_without_gaps():
    """Size 1 (radius 0) reaches half a pixel: only the pixels a steep segment passes exactly through would
    leave gaps."""
    store = LabelStore(SHAPE)
    points = [(0, 0), (30, 60), (110, 71)]
    store.stroke((0, 1, 0, 0), "y", "x", points, 0, 1)
    painted = xy_plane(store) == 1
    assert ndimage.label(painted, np.ones((3, 3)))[1] == 1
    assert (painted >= fine_union(painted.shape, points, 0.5)).all()
    assert (painted <= fine_union(painted.shape, points, 0.52)).all()
    store.stroke((0, 1, 0, 0), "y", "x", [(60, 10)], 0, 2)
    assert (xy_plane(store) == 2).sum() == 1  # a dab is one pixel


@pytest.mark.parametrize("radius", [1, 2, 3, 5, 10])
def test_the_swept_brush_is_the_union_of_discs_along_the_segments(radius):
    points = [(5, 7), (60, 31), (61, 31), (30, 110), (30, 110), (117, 2)]
    store = LabelStore(SHAPE)
    store.stroke((0, 1, 0, 0), "y", "x", points, radius, 2)
    painted = xy_plane(store) == 2
    shape = painted.shape
    assert (painted >= fine_union(shape, points, radius)).all(), "a pixel of a disc on the segments was missed"
    assert (painted <= fine_union(shape, points, radius + 0.02)).all(), "a pixel beyond the radius was painted"
    assert not xy_plane(store, 0).any() and not xy_plane(store, 2).any(), "only the view's plane is painted"


@pytest.mark.parametrize("plane", ["xz", "yz"])
def test_strokes_in_the_other_orthoviews_sweep_their_plane(plane):
    """The mask of a stroke of a yz view (rows y, columns z) was laid out as if z came before y."""
    store = LabelStore((1, 90, 80, 70))
    rows_axis, cols_axis = {"xz": ("z", "x"), "yz": ("y", "z")}[plane]
    position = (0, 50, 41, 33)
    points = [(2, 3), (75, 60), (30, 65)]
    store.stroke(position, rows_axis, cols_axis, points, 4, 1)
    start, stop = list(position), [p + 1 for p in position]
    for axis in (rows_axis, cols_axis):
        start["tzyx".index(axis)], stop["tzyx".index(axis)] = 0, store.grid.image.stop["tzyx".index(axis)]
    labels = store.region(Roi(tuple(start), tuple(stop))).squeeze()
    painted = (labels if "tzyx".index(rows_axis) < "tzyx".index(cols_axis) else labels.T) == 1
    assert (painted >= fine_union(painted.shape, points, 4)).all()
    assert (painted <= fine_union(painted.shape, points, 4.02)).all()
    assert int((store.region(Roi.from_shape(store.grid.image.shape)) == 1).sum()) == int(painted.sum())


def test_the_eraser_sweeps_too_and_only_where_it_passes():
    store = LabelStore(SHAPE)
    for row in range(0, 120, 4):  # a field of class 1 and 2 lines
        store.stroke((0, 1, 0, 0), "y", "x", [(row, 0), (row, 129)], 1, 1 + row % 8 // 4)
    before = xy_plane(store)
    store.stroke((0, 1, 0, 0), "y", "x", [(0, 0), (119, 129)], 3, 0)
    erased = fine_union(before.shape, [(0, 0), (119, 129)], 3)
    after = xy_plane(store)
    assert not after[erased].any()
    assert np.array_equal(after[~erased], before[~erased])


def test_a_stroke_tells_the_blocks_whose_labels_it_changed():
    store = LabelStore(SHAPE)
    touched = store.stroke((0, 1, 0, 0), "y", "x", [(5, 5), (115, 125)], 2, 1)
    rows, cols = np.nonzero(xy_plane(store))
    assert touched == {(0, 0, r, c) for r, c in zip(rows // 40, cols // 40)}
    assert len(touched) > 3  # the diagonal crosses blocks its two end points are not in
    assert store.stroke((0, 1, 0, 0), "y", "x", [(5, 5), (115, 125)], 2, 1) == set()  # nothing changed
    assert store.stroke((0, 1, 0, 0), "y", "x", [(100, 5), (110, 5)], 2, 0) == set()  # erasing nothing


def test_a_stroke_painted_point_by_point_is_one_undo_step():
    store = LabelStore(SHAPE)
    store.stroke((0, 1, 0, 0), "y", "x", [(60, 60)], 5, 2)
    first = xy_plane(store).copy()
    store.begin_stroke((0, 1, 0, 0), "y", "x", 3, 1)
    painted = [store.stroke_to(10 + 5 * i, 10 + 6 * i) for i in range(19)]
    assert all(isinstance(roi, Roi) for roi in painted)
    assert painted[1] == Roi((0, 1, 7, 7), (1, 2, 19, 20))  # the box of the segment (10, 10)-(15, 16)
    assert xy_plane(store)[50, 58] == 1, "the labels are in the store while the stroke goes on"
    during = xy_plane(store).copy()
    rows, cols = np.nonzero(during != first)
    changed = {(0, 0, r, c) for r, c in zip(rows // 40, cols // 40)}
    assert store.end_stroke() == changed and store.undo() == changed
    assert np.array_equal(xy_plane(store), first), "one undo took the whole stroke back"
    store.redo()
    assert np.array_equal(xy_plane(store), during)
    assert store.stroke_to(3, 3) is None and store.end_stroke() == set()  # no stroke open


def test_an_undo_in_the_middle_of_a_stroke_takes_back_what_it_painted_so_far():
    store = LabelStore(SHAPE)
    store.begin_stroke((0, 1, 0, 0), "y", "x", 2, 1)
    store.stroke_to(10, 10)
    store.stroke_to(10, 50)
    assert store.undo() == {(0, 0, 0, 0), (0, 0, 0, 1)} and not xy_plane(store).any()
    assert store.stroke_to(10, 90) is None and store.end_stroke() == set()  # the rest of the drag paints nothing
    assert not xy_plane(store).any()


def test_a_stroke_from_outside_the_image_paints_the_part_inside():
    store = LabelStore(SHAPE)
    store.stroke((0, 1, 0, 0), "y", "x", [(-50, -40), (60, 65), (400_000, 65)], 3, 1)
    painted = xy_plane(store) == 1
    assert (painted >= fine_union(painted.shape, [(-50, -40), (60, 65), (240, 65)], 3)).all()
    assert (painted <= fine_union(painted.shape, [(-50, -40), (60, 65), (240, 65)], 3.02)).all()
    assert store.stroke((0, 1, 0, 0), "y", "x", [(-50, -40), (-50, 400)], 3, 1) == set()
