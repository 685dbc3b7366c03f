"""A frame's objects labelled as tasks on real ZeroMQ worker processes: bit for bit the whole-frame labels,
also when a worker is killed in the middle of a labelling."""

import threading

import numpy as np
import pytest
from scipy import ndimage

from backend.cache.redis_server import EmbeddedRedis, RedisSettings
from backend.compute.geometry import Roi
from backend.compute.objects_pipeline import ObjectsPipeline
from backend.compute.threshold import ThresholdSettings, smooth, threshold_frame
from backend.service.blockwise_objects import label_frame_blockwise
from backend.service.object_runners import ExecutorRunner
from backend.service.objects import object_blocks, request_objects
from tests.helpers import wait_for
from tests.integration.test_executor import _pipeline, small_project
from tests.integration.test_gateway import gateway_on, whole_image
from tests.integration.workers import ZmqWithWorkers, kill_worker
from tests.unit.test_blockwise_objects import Frame, random_case


def on_workers(executor, probabilities, settings, **options):
    frame = Frame(probabilities)
    result = label_frame_blockwise(frame.read_box, probabilities.shape[:3], settings, frame.write_box,
                                   runner=ExecutorRunner(executor), **options)
    return result, frame.labels


@pytest.mark.timeout(300)
def test_workers_label_the_20_random_volumes_bit_for_bit_as_the_whole_frame():
    with ZmqWithWorkers(ObjectsPipeline(ThresholdSettings()), workers=2) as cluster:
        for seed in range(20):
            probabilities, settings, block_shape = random_case(seed)
            expected = threshold_frame(probabilities, settings)
            result, labels = on_workers(cluster.executor, probabilities, settings, block_shape=block_shape,
                                        threads=4)
            assert labels.dtype == expected.dtype == result.dtype, seed
            assert np.array_equal(labels, expected), f"seed {seed}: {settings}, blocks {block_shape}"
        status = cluster.executor.status()
        assert status.done >= 2 * 20 and all(w.blocks_done > 0 for w in status.workers), status


@pytest.mark.timeout(300)
def test_a_worker_killed_during_a_labelling_loses_nothing():
    rng = np.random.default_rng(7)
    fields = ndimage.gaussian_filter(rng.random((24, 96, 96, 2)), sigma=(2, 2, 2, 0))
    probabilities = ((fields - fields.min()) / (fields.max() - fields.min())).astype(np.float32)
    core = smooth(probabilities[..., 0], (1.0, 1.5, 1.5))
    final = smooth(probabilities[..., 1], (1.0, 1.5, 1.5)) + core
    settings = ThresholdSettings(method=1, channel=1, core_channel=0, low=float(np.quantile(final, 0.75)),
                                 high=float(np.quantile(core, 0.95)), min_size=3, sigmas=(1.0, 1.5, 1.5))
    expected = threshold_frame(probabilities, settings)
    assert expected.max() > 5
    with ZmqWithWorkers(ObjectsPipeline(settings), workers=2, processes=1) as cluster:
        victim = cluster.procs[0]
        killed = threading.Event()

        def kill_when_busy(done: int, total: int) -> None:
            busy = all(w.in_flight > 0 for w in cluster.executor.status().workers)
            if not killed.is_set() and done >= 4 and busy:
                kill_worker(victim)
                killed.set()

        result, labels = on_workers(cluster.executor, probabilities, settings, block_shape=(6, 24, 24), threads=6,
                                    progress=kill_when_busy)
        assert killed.is_set()
        assert np.array_equal(labels, expected) and labels.dtype == expected.dtype
        wait_for(lambda: len(cluster.executor.status().lost) >= 1, 10)
        assert cluster.executor.status().redispatched >= 1
        assert result.object_count == np.count_nonzero(np.unique(expected))


@pytest.mark.timeout(300)
def test_the_objects_layer_labels_its_blocks_on_the_gateways_workers(tmp_path):
    path, image = small_project(str(tmp_path), shape=(24, 96, 96))
    pipeline = _pipeline(path)
    probabilities = whole_image(pipeline, image)[0]
    settings = ThresholdSettings(channel=1, min_size=5, sigmas=(1.0, 1.0, 1.0))
    expected = threshold_frame(probabilities, settings)
    assert expected.max() > 3
    server = EmbeddedRedis(RedisSettings(maxmemory_mb=256)).start()
    try:
        with ZmqWithWorkers(pipeline, workers=2) as cluster:
            gateway = gateway_on(path, pipeline, cluster.executor, server.client(), (1, 12, 48, 48))
            try:
                frame = Roi((0, 0, 0, 0), (1, 24, 96, 96))
                labels = request_objects(gateway, frame, settings).result(timeout=120)
                assert np.array_equal(labels[0, ..., 0], expected)
                blocks = len(object_blocks(gateway, frame))
                # each probability block once, then both passes of every block of labels as the workers' tasks
                wait_for(lambda: cluster.executor.status().done == blocks + 2 * blocks, 30)
                assert cluster.executor.status().submitted == blocks + 2 * blocks
            finally:
                gateway.close()
    finally:
        server.stop()


@pytest.mark.timeout(300)
def test_a_dask_cluster_labels_the_frames_bit_for_bit_as_the_whole_frame():
    from dask.distributed import Client, LocalCluster

    from backend.distributed.dask_executor import DaskExecutor

    cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None)
    executor = DaskExecutor(Client(cluster), "in-process Dask cluster", on_close=cluster.close)
    try:
        for seed in (1, 2, 3, 6):  # 2D and 3D, simple and hysteresis, relabel on and off
            probabilities, settings, block_shape = random_case(seed)
            expected = threshold_frame(probabilities, settings)
            result, labels = on_workers(executor, probabilities, settings, block_shape=block_shape, threads=4)
            assert np.array_equal(labels, expected) and labels.dtype == expected.dtype, seed
        assert executor.status().done > 0
    finally:
        executor.close()
