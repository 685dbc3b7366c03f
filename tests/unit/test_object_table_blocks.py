"""The Object Features table from the Objects layer's blocks: asked for one object block at a time (never a
whole frame), a few at once, and equal to the features of the whole frame's labels computed directly."""

from __future__ import annotations

import csv
import threading

import numpy as np
import pytest
from scipy import ndimage

from backend.compute.geometry import Roi
from backend.compute.object_features import block_stats, feature_table
from backend.compute.threshold import ThresholdSettings, threshold_frame
from backend.io.sources.arrays import ArraySource
from backend.service import objects
from backend.service.export import ExportOptions, run_export
from backend.service.gateway import BATCH, Gateway, GatewayConfig
from backend.service.object_table import stream_tables
from tests.fakes import FakeCache, FakeExecutor, FakePipeline

BLOCK = (1, 1, 32, 24)  # odd-sized blocks: objects span several, the frame's edge blocks are cut
SETTINGS = ThresholdSettings(low=0.55, min_size=3, sigmas=(0.0, 0.0, 0.0))


def _probabilities(job) -> np.ndarray:
    """Channel 0: the raw value / 255 over the task's target (the raw data is the probability's pattern)."""
    task = job.task
    inside = tuple(slice(a - s, b - s) for (a, b), s in zip(task.target, task.start))
    p = task.raw[inside][..., 0].astype(np.float32) / 255
    return np.stack([p, 1 - p], axis=-1)


@pytest.fixture
def lane():
    rng = np.random.default_rng(3)
    blobs = ndimage.gaussian_filter(rng.random((3, 1, 90, 70)), (0, 0, 2, 2))
    raw = (255 * (blobs - blobs.min()) / np.ptp(blobs)).astype(np.uint8)
    executor = FakeExecutor(auto=True, compute=_probabilities)
    gateway = Gateway(ArraySource(raw, "tzyx"), FakePipeline("blobs"), executor, FakeCache(), GatewayConfig(BLOCK))
    yield gateway, raw
    gateway.close()
    executor.close()


def _expected(raw: np.ndarray, region: Roi) -> list[np.ndarray]:
    """Each time step's rows from the whole frame's labels (``threshold_frame``), cut to the region."""
    tables, rows = [], 0
    for t in range(region.start[0], region.stop[0]):
        p = raw[t].astype(np.float32)[..., None] / 255
        labels = threshold_frame(np.concatenate([p, 1 - p], axis=-1), SETTINGS)
        cut = region.slices()[1:]
        start = tuple(region.start[1:])
        stats = block_stats(labels[cut], raw[t][cut][..., None], start)
        tables.append(feature_table(stats, t, rows, False))
        rows += len(tables[-1])
    return tables


@pytest.fixture
def requested(monkeypatch):
    """The regions the Objects layer was asked for, and the most asked for at once."""
    seen = {"rois": [], "open": 0, "most": 0}
    lock = threading.Lock()
    original = objects.ObjectsRequest.__init__

    def spy(self, roi, on_block, blocks):
        original(self, roi, on_block, blocks)
        with lock:
            seen["rois"].append(roi)
            seen["open"] += 1
            seen["most"] = max(seen["most"], seen["open"])

        def closed(_):
            with lock:
                seen["open"] -= 1

        self.future.add_done_callback(closed)

    monkeypatch.setattr(objects.ObjectsRequest, "__init__", spy)
    return seen


def _assert_tables_equal(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert [len(t) for t in got] == [len(t) for t in expected] and sum(len(t) for t in got) > 10
    for table, want in zip(got, expected):
        assert table.dtype == want.dtype
        for name in want.dtype.names:
            np.testing.assert_array_equal(table[name], want[name], err_msg=name)


@pytest.mark.parametrize("region", [Roi((0, 0, 0, 0), (3, 1, 90, 70)), Roi((1, 0, 13, 5), (3, 1, 77, 61))])
def test_tables_from_blocks_equal_the_whole_frames_features(lane, requested, region):
    gateway, raw = lane
    got = list(stream_tables(gateway, region, SETTINGS, BATCH, ahead=3))
    _assert_tables_equal(got, _expected(raw, region))
    block_voxels = int(np.prod(BLOCK))
    assert max(roi.size for roi in requested["rois"]) <= block_voxels  # never a frame of labels
    assert requested["most"] <= 3


def test_the_export_asks_for_blocks_not_frames(lane, requested, tmp_path):
    gateway, raw = lane
    options = ExportOptions(kind="Object Features", fmt="csv", filename_pattern=str(tmp_path / "table"),
                            progress=False, threshold=SETTINGS)
    result = run_export(gateway, "blobs", options, max_in_flight=4)
    with open(result.path, newline="") as f:
        rows = list(csv.DictReader(f))
    expected = np.concatenate(_expected(raw, Roi.from_shape(gateway.source.spatial_shape)))
    assert len(rows) == len(expected) > 10
    for row, want in zip(rows, expected):
        assert [float(row[name]) for name in expected.dtype.names] == pytest.approx(
            [float(want[name]) for name in expected.dtype.names], rel=1e-6)
    assert result.blocks == 3
    assert max(roi.size for roi in requested["rois"]) <= int(np.prod(BLOCK))
    assert requested["most"] <= 4
