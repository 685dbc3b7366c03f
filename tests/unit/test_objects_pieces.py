"""An Objects export and a web chunk of objects assemble only their piece, never a whole frame."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from backend.compute.geometry import Roi
from backend.compute.threshold import ThresholdSettings
from backend.io.sources.arrays import ArraySource
from backend.service import objects as objects_module
from backend.service.export import ExportOptions, run_export
from backend.service.gateway import Gateway, GatewayConfig
from backend.web.catalog import Lane
from tests.fakes import FakeCache, FakeExecutor, FakePipeline

BLOCK = (1, 2, 8, 8)  # a (4, 16, 16) frame is 8 blocks


@pytest.fixture
def gateway():
    pipeline = FakePipeline("objects pieces")
    executor = FakeExecutor(auto=True)
    gateway = Gateway(ArraySource(np.zeros((2, 4, 16, 16), np.uint16), "tzyx"), pipeline, executor, FakeCache(),
                      GatewayConfig(BLOCK))
    yield gateway
    gateway.close()
    executor.close()


@pytest.fixture
def assembled(monkeypatch):
    """The regions every ObjectsRequest assembled."""
    regions = []
    real = objects_module.ObjectsRequest.__init__

    def spy(self, roi, on_block, blocks):
        regions.append(roi)
        real(self, roi, on_block, blocks)

    monkeypatch.setattr(objects_module.ObjectsRequest, "__init__", spy)
    return regions


def settings_for(gateway: Gateway) -> ThresholdSettings:
    return ThresholdSettings(low=gateway.pipeline.value() / 2, min_size=1, sigmas=(0.0, 0.0, 0.0))


def test_an_objects_export_is_assembled_block_by_block_and_counted_in_frames(gateway, assembled, tmp_path):
    counts = []
    options = ExportOptions(kind="Objects", filename_pattern=str(tmp_path / "{nickname}_{result_type}"),
                            progress=False, threshold=settings_for(gateway))
    result = run_export(gateway, "fake", options, max_in_flight=3, on_progress=lambda done, total: counts.append(done))
    with h5py.File(result.path) as f:
        labels = f["exported_data"][()]
    assert labels.shape == (2, 4, 16, 16, 1) and (labels == 1).all()  # one object filling each frame
    assert result.blocks == 2 and counts[0] == 0 and counts[-1] == 2 and sorted(set(counts)) == [0, 1, 2]
    assert assembled and all(roi.shape == BLOCK for roi in assembled)  # a block at a time, never a frame


def test_a_web_chunk_of_objects_is_assembled_on_its_own(gateway, assembled):
    lane = Lane(0, "fake", gateway, settings_for(gateway))
    chunk = Roi((1, 2, 8, 0), (2, 4, 16, 8))
    values = lane.fetch("objects", chunk, 0, lane.view()).future.result(timeout=30)
    assert values.shape == (1, 2, 8, 8, 1) and (values == 1).all()
    assert assembled == [chunk]
