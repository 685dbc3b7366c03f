"""A project's frame whose highest object ID needs uint64 (forced with a small fake limit): its blocks are
labelled, cached and delivered as uint64, and the headless Objects export widens its output and says so."""

import h5py
import numpy as np
import pytest

from backend.compute import object_blocks as object_blocks_module
from backend.compute.geometry import Roi
from backend.compute.threshold import ThresholdSettings, threshold_frame
from backend.distributed.local_executor import LocalExecutor
from backend.service.export import ExportOptions, run_export
from backend.service.objects import object_blocks, objects_key, request_objects
from ilastik_desktop.cli.main import main
from tests.helpers import wait_for
from tests.integration.test_executor import _pipeline, small_project
from tests.integration.test_gateway import gateway_on, whole_image

BLOCKS = (1, 12, 48, 48)  # the 24 x 96 x 96 frame is 8 blocks
SETTINGS = ThresholdSettings(channel=1, min_size=5, sigmas=(1.0, 1.0, 1.0))
FAKE_LIMIT = 2  # as if uint32 held IDs up to 2 only


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("objects_uint64")), shape=(24, 96, 96))


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setattr(object_blocks_module, "UINT32_LIMIT", FAKE_LIMIT)


@pytest.mark.timeout(240)
def test_a_frame_beyond_uint32_is_labelled_cached_delivered_and_exported_as_uint64(project, redis_server, wide,
                                                                                   tmp_path):
    path, image = project
    pipeline = _pipeline(path)
    expected = threshold_frame(whole_image(pipeline, image)[0], SETTINGS)
    assert expected.max() > FAKE_LIMIT
    frame = Roi((0, 0, 0, 0), (1, 24, 96, 96))
    with LocalExecutor(workers=1) as ex:
        gateway = gateway_on(path, pipeline, ex, redis_server.client(), BLOCKS)
        try:
            parts = []
            request = request_objects(gateway, frame, SETTINGS,
                                      on_block=lambda part, values: parts.append(values.dtype))
            labels = request.result(timeout=120)
            assert labels.dtype == np.uint64 and np.array_equal(labels[0, ..., 0], expected)
            assert parts == [np.dtype(np.uint64)] * 8

            def cached_dtypes():
                blocks = [gateway.cache.get(objects_key(gateway, 0, SETTINGS, block=b))
                          for b in object_blocks(gateway, frame)]
                return {None if b is None else b.dtype for b in blocks}
            wait_for(lambda: cached_dtypes() == {np.dtype(np.uint64)}, 30, message="the blocks are cached as uint64")
            computed = gateway.status().computed
            plane = Roi((0, 17, 0, 0), (1, 18, 96, 96))  # from the cache: still uint64, nothing labelled again
            again = request_objects(gateway, plane, SETTINGS).result(timeout=60)
            assert again.dtype == np.uint64 and np.array_equal(again[0, 0, ..., 0], expected[17])
            assert gateway.status().computed == computed

            options = ExportOptions(kind="Objects", filename_pattern=str(tmp_path / "objects"), progress=False,
                                    threshold=SETTINGS)
            result = run_export(gateway, "p", options)
            with h5py.File(result.path, "r") as f:
                exported, recorded = f["exported_data"][()], f["exported_data"].attrs["max_object_id"]
            assert exported.dtype == np.uint64 and np.array_equal(exported[..., 0], expected)
            assert recorded == expected.max() == result.highest_object_id and result.labels_dtype == np.uint64
        finally:
            gateway.close()


@pytest.mark.timeout(240)
def test_the_headless_summary_line_says_uint64_labels(project, wide, tmp_path, capsys):
    path, _ = project
    code = main(["--headless", "--no-progress", "--project", path, "--output_filename_format",
                 str(tmp_path / "objects"), "--block_shape", "12,48,48", "--workers", "1", "--export_source",
                 "Objects", "--threshold", "channel=1,min_size=5"])
    assert code == 0
    with h5py.File(tmp_path / "objects.h5", "r") as f:
        labels, recorded = f["exported_data"][()], f["exported_data"].attrs["max_object_id"]
    assert labels.dtype == np.uint64 and recorded == labels.max() > FAKE_LIMIT
    assert f"highest object ID {labels.max()}, uint64 labels; " in capsys.readouterr().err
