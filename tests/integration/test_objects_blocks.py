"""The Objects layer block by block through a real gateway, embedded Redis and worker processes."""

import threading

import numpy as np
import pytest

from backend.compute.geometry import Roi
from backend.compute.threshold import ThresholdSettings, threshold_frame
from backend.distributed.local_executor import LocalExecutor
from backend.service import blockwise_objects
from backend.service.objects import object_blocks, objects_key, request_frame, request_objects
from tests.helpers import wait_for
from tests.integration.test_executor import _pipeline, small_project
from tests.integration.test_gateway import gateway_on, whole_image

BLOCKS = (1, 12, 48, 48)  # the 24 x 96 x 96 frame is 8 blocks


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("objects")), shape=(24, 96, 96))


def cached(gateway, settings, roi):
    return [gateway.cache.get(objects_key(gateway, 0, settings, block=b)) is not None
            for b in object_blocks(gateway, roi)]


@pytest.mark.timeout(240)
def test_objects_arrive_block_by_block_cached_per_block_and_a_frame_is_labelled_once(project, redis_server,
                                                                                    monkeypatch):
    labellings = []
    real = blockwise_objects.label_frame_blockwise
    monkeypatch.setattr(blockwise_objects, "label_frame_blockwise",
                        lambda *args, **kwargs: labellings.append(args[2]) or real(*args, **kwargs))
    path, image = project
    pipeline = _pipeline(path)
    probabilities = whole_image(pipeline, image)[0]
    with LocalExecutor(workers=1) as ex:
        gateway = gateway_on(path, pipeline, ex, redis_server.client(), BLOCKS)
        try:
            settings = ThresholdSettings(channel=1, min_size=5, sigmas=(1.0, 1.0, 1.0))
            expected = threshold_frame(probabilities, settings)
            assert expected.max() > 3
            frame = Roi((0, 0, 0, 0), (1, 24, 96, 96))
            parts = []
            request = request_objects(gateway, frame, settings,
                                      on_block=lambda part, values: parts.append((part, values.copy())))
            labels = request.result(timeout=120)
            assert np.array_equal(labels[0, ..., 0], expected)
            assert sorted(p.start for p, _ in parts) == sorted(b.start for b in object_blocks(gateway, frame))
            assert len(parts) == 8 and all(np.array_equal(v[0, ..., 0], expected[p.slices()[1:]]) for p, v in parts)
            wait_for(lambda: all(cached(gateway, settings, frame)), 30,  # stored just after being delivered
                     message="the frame's blocks are cached")
            computed = gateway.status().computed
            assert computed == 8 + 8  # eight probability blocks (each once), eight blocks of labels
            assert labellings == [settings]  # of one labelling of the frame

            plane = Roi((0, 17, 0, 0), (1, 18, 96, 96))  # a view elsewhere in the frame: from the cache
            again = request_objects(gateway, plane, settings).result(timeout=60)
            assert np.array_equal(again[0, 0, ..., 0], expected[17]) and gateway.status().computed == computed

            stricter = ThresholdSettings(channel=1, min_size=60, sigmas=(1.0, 1.0, 1.0))
            first = Roi((0, 3, 0, 0), (1, 4, 96, 96))  # one slice asked for: the whole frame is labelled and cached
            sliced = request_objects(gateway, first, stricter).result(timeout=60)
            assert np.array_equal(sliced[0, 0, ..., 0], threshold_frame(probabilities, stricter)[3])
            wait_for(lambda: all(cached(gateway, stricter, frame)), 60, message="the frame's other blocks are cached")
            assert gateway.status().computed == computed + 8  # labels only: the probabilities came from the cache
            assert labellings == [settings, stricter]
        finally:
            gateway.close()


@pytest.mark.timeout(240)
def test_a_bad_channel_fails_every_block_and_cancelling_a_frame_stops_its_blocks(project, redis_server):
    path, _ = project
    pipeline = _pipeline(path)
    with LocalExecutor(workers=1) as ex:
        gateway = gateway_on(path, pipeline, ex, redis_server.client(), BLOCKS)
        try:
            with pytest.raises(ValueError, match="threshold channel 5 does not exist"):
                request_frame(gateway, 0, ThresholdSettings(channel=5)).result(timeout=60)
            request = request_objects(gateway, Roi((0, 0, 0, 0), (1, 24, 96, 96)), ThresholdSettings(min_size=3))
            request.cancel()
            assert request.future.cancelled() and all(part.future.cancelled() for part in request.parts)
        finally:
            gateway.close()
    # the frame's labelling went on for the cache; with the gateway closed, its reads fail and its thread ends
    wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith("objects-")], 60,
             message="the frame's labelling threads end")
