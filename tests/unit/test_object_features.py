"""Object features: block partials merged by object ID equal the whole frame's features computed directly
with scipy.ndimage, and the table has ilastik's columns."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from backend.compute.object_features import block_stats, feature_table, merge_stats, table_columns


def _random_labels(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Blobs with scattered IDs (gaps kept, as thresholding leaves them), some spanning many blocks."""
    noise = ndimage.gaussian_filter(rng.random(shape), 1.0)
    labels, count = ndimage.label(noise > np.quantile(noise, 0.75))
    ids = rng.permutation(np.arange(1, 4 * count + 1))[:count]  # non-consecutive IDs
    return np.r_[0, ids][labels].astype(np.uint32)


def _blockwise(labels: np.ndarray, raw: np.ndarray, block: tuple[int, int, int]):
    parts = []
    for start in itertools.product(*(range(0, n, b) for n, b in zip(labels.shape, block))):
        cut = tuple(slice(s, s + b) for s, b in zip(start, block))
        parts.append(block_stats(labels[cut], raw[cut], start))
    rng = np.random.default_rng(len(parts))
    return merge_stats([parts[i] for i in rng.permutation(len(parts))])  # the order of merging is free


@pytest.mark.parametrize("shape, block, dtype", [
    ((1, 61, 47), (1, 7, 11), np.uint8),
    ((9, 23, 31), (4, 5, 13), np.uint16),
    ((6, 19, 17), (5, 3, 7), np.float32),
])
def test_blockwise_merge_equals_whole_frame_computed_by_scipy(shape, block, dtype):
    rng = np.random.default_rng(7)
    labels = _random_labels(rng, shape)
    raw = (rng.random(shape + (2,)) * 200).astype(dtype)
    stats = _blockwise(labels, raw, block)
    ids = np.unique(labels[labels > 0])
    assert len(ids) > 5
    np.testing.assert_array_equal(stats.ids, ids)
    np.testing.assert_array_equal(stats.count, ndimage.sum_labels(np.ones(shape), labels, ids))
    exact = np.testing.assert_array_equal if dtype != np.float32 else np.testing.assert_allclose
    for c in range(2):
        channel = raw[..., c].astype(np.float64)
        exact(stats.mean[:, c], ndimage.mean(channel, labels, ids))
        np.testing.assert_array_equal(stats.minimum[:, c], ndimage.minimum(channel, labels, ids))
        np.testing.assert_array_equal(stats.maximum[:, c], ndimage.maximum(channel, labels, ids))
    boxes = ndimage.find_objects(labels)
    np.testing.assert_array_equal(stats.bbox_min, [[s.start for s in boxes[i - 1]] for i in ids])
    np.testing.assert_array_equal(stats.bbox_stop, [[s.stop for s in boxes[i - 1]] for i in ids])
    np.testing.assert_allclose(stats.center, ndimage.center_of_mass(np.ones(shape), labels, ids), rtol=1e-12)
    whole = block_stats(labels, raw, (0, 0, 0))
    for field in ("count", "sums", "minimum", "maximum", "bbox_min", "bbox_max", "coord_sums"):
        exact(getattr(stats, field), getattr(whole, field))


def test_no_objects_gives_an_empty_table_with_ilastiks_columns():
    stats = block_stats(np.zeros((1, 4, 5), np.uint32), np.ones((1, 4, 5, 1), np.uint8), (0, 0, 0))
    table = feature_table(stats, 3, 0, volumetric=False)
    assert len(table) == 0
    assert table.dtype.names[:3] == ("object_id", "timestep", "labelimage_oid")


def test_table_columns_are_ilastiks_names_suffixed_by_axis_x_y_z_and_channel():
    names_2d_gray = [name for name, _ in table_columns(1, volumetric=False)]
    assert names_2d_gray == ["object_id", "timestep", "labelimage_oid", "Mean Intensity", "Minimum intensity",
                             "Maximum intensity", "Bounding Box Minimum_0", "Bounding Box Minimum_1",
                             "Bounding Box Maximum_0", "Bounding Box Maximum_1", "Center of the object_0",
                             "Center of the object_1", "Size in pixels"]
    names_3d_rgb = [name for name, _ in table_columns(3, volumetric=True)]
    assert "Mean Intensity_2" in names_3d_rgb and "Mean Intensity" not in names_3d_rgb
    assert "Bounding Box Maximum_2" in names_3d_rgb and "Center of the object_2" in names_3d_rgb


def test_table_rows_give_x_y_z_order_exclusive_bbox_end_and_running_object_id():
    labels = np.zeros((2, 5, 6), np.uint32)
    labels[1, 1:3, 2:5] = 9  # z 1, y 1..2, x 2..4
    raw = np.arange(60, dtype=np.uint8).reshape(2, 5, 6, 1)
    table = feature_table(block_stats(labels, raw, (0, 0, 0)), 4, 10, volumetric=True)
    row = table[0]
    assert (row["object_id"], row["timestep"], row["labelimage_oid"]) == (10, 4, 9)
    assert [row[f"Bounding Box Minimum_{i}"] for i in range(3)] == [2, 1, 1]
    assert [row[f"Bounding Box Maximum_{i}"] for i in range(3)] == [5, 3, 2]
    assert [row[f"Center of the object_{i}"] for i in range(3)] == [3.0, 1.5, 1.0]
    assert row["Size in pixels"] == 6
    values = raw[..., 0][labels == 9]
    assert (row["Mean Intensity"], row["Minimum intensity"], row["Maximum intensity"]) == (
        np.float32(values.mean()), values.min(), values.max())


def test_status_line_describes_an_object_with_inclusive_x_y_z_bounds():
    from ilastik_desktop.runtime.object_info import describe_object

    labels = np.zeros((3, 6, 7), np.uint32)
    labels[1:3, 2:4, 1:6] = 5
    raw = np.full((3, 6, 7, 2), 10, np.uint16)
    raw[..., 1] = 3
    stats = block_stats(labels, raw, (0, 0, 0))
    assert describe_object(stats, 5, volumetric=True) == "object 5: 20 px, mean 10/3, bbox x 1-5 y 2-3 z 1-2"
    flat = block_stats(labels[1:2], raw[1:2, ..., :1], (0, 0, 0))
    assert describe_object(flat, 5, volumetric=False) == "object 5: 10 px, mean 10, bbox x 1-5 y 2-3"
    assert describe_object(stats, 4, volumetric=True) == "object 4"
