import numpy as np
import pytest

from backend.compute.geometry import BlockGrid, Roi


def test_roi_basics():
    r = Roi((1, 2), (4, 6))
    assert r.shape == (3, 4) and r.size == 12 and r.ndim == 2
    assert r.slices() == (slice(1, 4), slice(2, 6))
    assert r.intersect(Roi((3, 0), (10, 3))) == Roi((3, 2), (4, 3))
    assert r.intersect(Roi((5, 5), (6, 6))) is None
    assert Roi.from_list(r.to_list()) == r
    with pytest.raises(ValueError):
        Roi((2,), (1,))


def test_grow_clips_at_image_border():
    image = Roi.from_shape((10, 10))
    assert Roi((0, 4), (3, 6)).grow((2, 2), image) == Roi((0, 2), (5, 8))
    assert Roi((8, 8), (10, 10)).grow((5, 5), image) == Roi((3, 3), (10, 10))


def test_relative_to_converts_global_to_local():
    outer = Roi((5, 5), (20, 20))
    inner = Roi((7, 9), (8, 12))
    a = np.arange(400).reshape(20, 20)
    assert np.array_equal(a[outer.slices()][inner.relative_to(outer)], a[inner.slices()])
    with pytest.raises(ValueError):
        Roi((0, 0), (6, 6)).relative_to(outer)


def test_grid_covers_image_exactly_once():
    grid = BlockGrid((1, 7, 20, 33), (1, 4, 8, 16), (0, 1, 2, 3))
    count = np.zeros(grid.shape, int)
    for block in grid:
        count[block.roi.slices()] += 1
        assert block.halo_roi.contains(block.roi)
        assert grid.image.contains(block.halo_roi)
    assert (count == 1).all()
    assert len(grid) == len(list(grid)) == 1 * 2 * 3 * 3


def test_blocks_in_region():
    grid = BlockGrid((100, 100), (30, 30), (0, 0))
    found = {b.index for b in grid.blocks_in(Roi((25, 59), (31, 61)))}
    assert found == {(0, 1), (0, 2), (1, 1), (1, 2)}


def test_block_shape_clipped_to_image():
    grid = BlockGrid((5, 5), (64, 64), (1, 1))
    assert grid.block_shape == (5, 5) and len(grid) == 1
