"""Failures inside the gateway and executor: every claim and every waiter is settled, nothing hangs."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
from scipy import ndimage

from backend.cache.block_cache import BlockCache, block_key
from backend.cache.redis_server import EmbeddedRedis, RedisSettings
from backend.compute.geometry import Roi
from backend.compute.threshold import ThresholdSettings
from backend.config import CacheConfig, ExecutorConfig
from backend.distributed.zmq_executor import NoWorkers, ZmqExecutor
from backend.errors import is_deterministic
from backend.io.sources import open_source
from backend.service.export import ExportOptions, run_export
from backend.service.gateway import Gateway, GatewayConfig
from backend.service.objects import request_frame
from tests.helpers import wait_for
from tests.integration.test_executor import _pipeline, _task, small_project
from tests.integration.test_gateway import whole_image
from tests.integration.workers import ZmqWithWorkers, compute_processes, free_port, kill_worker, start_worker

ROI = Roi((0, 0, 0, 0), (1, 24, 48, 48))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("robust")), shape=(24, 96, 96))


@pytest.fixture
def redis_server():
    server = EmbeddedRedis(RedisSettings(maxmemory_mb=64)).start()
    yield server
    server.stop()


class FailingReads:
    """A real HDF5 source whose reads fail with an OSError while ``broken`` is set (a disk or network error)."""

    def __init__(self, source):
        self._source, self.broken = source, threading.Event()

    def read(self, roi):
        if self.broken.is_set():
            raise OSError(5, "Input/output error", "raw.h5")
        return self._source.read(roi)

    def __getattr__(self, name):
        return getattr(self._source, name)


def _gateway(source, pipeline, executor, client, lease_s=3.0):
    return Gateway(source, pipeline, executor, BlockCache(client, CacheConfig(lease_s=lease_s)),
                   GatewayConfig((1, 24, 48, 48)))


@pytest.mark.timeout(120)
def test_a_failed_raw_read_frees_the_claim_and_settles_every_waiter(project, redis_server):
    path, _ = project
    pipeline = _pipeline(path)
    raw = os.path.join(os.path.dirname(path), "raw.h5/data")
    failing = FailingReads(open_source(raw))
    with ZmqWithWorkers(pipeline) as ex:
        first = _gateway(failing, pipeline, ex.executor, redis_server.client())
        second = _gateway(open_source(raw), pipeline, ex.executor, redis_server.client())
        try:
            key = block_key(first.data_fingerprint, first.pipeline_fingerprint, "Probabilities", ROI)
            failing.broken.set()
            with pytest.raises(OSError):
                first.request("Probabilities", ROI).result(timeout=10)
            assert not first.cache.leased(key) and first.cache.error(key) is None  # freed, and not cached
            expected = second.request("Probabilities", ROI).result(timeout=30)  # another process computes it
            failing.broken.clear()
            assert np.array_equal(first.request("Probabilities", ROI).result(timeout=30), expected)
        finally:
            first.close()
            second.close()


@pytest.mark.timeout(60)
def test_transient_failures_are_not_cached(project, redis_server):
    path, _ = project
    pipeline = _pipeline(path)
    executor = ZmqExecutor(config=ExecutorConfig(heartbeat_s=0.2))  # no worker: the block waits in the queue
    gateway = _gateway(open_source(os.path.join(os.path.dirname(path), "raw.h5/data")), pipeline, executor,
                       redis_server.client())
    try:
        key = block_key(gateway.data_fingerprint, gateway.pipeline_fingerprint, "Probabilities", ROI)
        request = gateway.request("Probabilities", ROI)
        executor.close()  # as at Ctrl-C
        with pytest.raises(RuntimeError, match="executor closed"):
            request.result(timeout=10)
        assert not is_deterministic(request.future.exception())
        wait_for(lambda: not gateway.cache.leased(key), 5, interval=0.02, message="the block's claim was not freed")
        assert gateway.cache.error(key) is None and not gateway.cache.leased(key)
    finally:
        gateway.close()


@pytest.mark.timeout(30)
def test_without_any_worker_queued_tasks_fail_after_the_timeout(project):
    path, image = project
    pipeline = _pipeline(path)
    with ZmqExecutor(config=ExecutorConfig(heartbeat_s=0.2, worker_timeout_s=1.0), fail_without_workers=True) as ex:
        ex.add_pipeline(pipeline)
        started = time.monotonic()
        future = ex.submit(_task(pipeline, image))
        with pytest.raises(NoWorkers, match="no worker was available for 1 s"):
            future.result(timeout=10)
        assert time.monotonic() - started < 5
        assert ex.status().workers == () and ex.status().no_workers_s >= 1.0


@pytest.mark.timeout(180)
def test_a_hung_compute_process_has_its_task_redispatched(project):
    path, image = project
    pipeline = _pipeline(path)
    expected = pipeline.run(_task(pipeline, image))
    # liveness 10: a loaded machine's short stall must not turn the hung worker into a silent (dropped) one
    with ZmqWithWorkers(pipeline, workers=2, deadline_floor_s=1.0, liveness=10) as ex:
        for _ in range(4):  # measure a few block times first
            ex.submit(_task(pipeline, image)).result(timeout=60)
        hung = compute_processes(psutil.Process(ex.procs[0].pid))
        assert hung, "no compute process to hang"
        for proc in hung:
            proc.suspend()  # the worker still heartbeats; its compute process never answers
        try:
            futures = [ex.submit(_task(pipeline, image)) for _ in range(6)]
            assert all(np.array_equal(f.result(timeout=60), expected) for f in futures)
            status = ex.status()
            assert status.overdue >= 1 and any(w.state == "slow" for w in status.workers), status
        finally:
            for proc in hung:
                proc.resume()


@pytest.mark.timeout(180)
def test_a_listening_worker_serves_one_gateway_and_refuses_a_second(project):
    path, image = project
    pipeline = _pipeline(path)
    expected = pipeline.run(_task(pipeline, image))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    worker = start_worker("--listen", endpoint)
    try:
        with ZmqExecutor(bind=None, connect_to=(endpoint,), config=ExecutorConfig(heartbeat_s=0.2)) as first:
            first.add_pipeline(pipeline)
            assert first.wait_for_workers(1, timeout=60)
            with ZmqExecutor(bind=None, connect_to=(endpoint,), config=ExecutorConfig(heartbeat_s=0.2)) as second:
                second.add_pipeline(pipeline)
                wait_for(lambda: second.status().refused, 10,
                         message=lambda: f"the second gateway was not refused: {second.status()}")
                assert "busy" in second.status().refused[0] and not second.status().workers
                futures = [first.submit(_task(pipeline, image)) for _ in range(4)]
                assert all(np.array_equal(f.result(timeout=60), expected) for f in futures)
                first.close()  # the first leaves: the second is served
                assert second.wait_for_workers(1, timeout=20)
                assert np.array_equal(second.submit(_task(pipeline, image)).result(timeout=60), expected)
    finally:
        kill_worker(worker)


@pytest.mark.timeout(120)
def test_a_slow_consumer_of_results_does_not_get_healthy_workers_dropped(project):
    path, image = project
    pipeline = _pipeline(path)
    with ZmqWithWorkers(pipeline) as ex:
        slow = ex.submit(_task(pipeline, image))
        slow.add_done_callback(lambda _: time.sleep(3))  # like a cache write against a stalled Redis (0.6 s limit)
        slow.result(timeout=60)
        after = ex.submit(_task(pipeline, image))
        after.result(timeout=60)
        assert len(ex.status().workers) == 1 and ex.status().redispatched == 0




def independent_objects(probabilities: np.ndarray, settings: ThresholdSettings) -> np.ndarray:
    """ilastik 1.4's simple thresholding from its documented rules, with scipy alone (not our code)."""
    smoothed = ndimage.gaussian_filter(probabilities[..., settings.channel].astype(np.float64), settings.sigmas,
                                       mode="mirror", truncate=2.0)
    labels, count = ndimage.label(smoothed >= settings.low, structure=ndimage.generate_binary_structure(3, 1))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = (sizes >= settings.min_size) & (sizes <= settings.max_size)
    keep[0] = False
    return np.where(keep[labels], labels, 0)


@pytest.mark.timeout(120)
def test_a_frames_objects_are_labelled_once_however_many_views_ask(project, redis_server):
    path, _ = project
    pipeline = _pipeline(path)
    settings = ThresholdSettings(min_size=20)
    with ZmqWithWorkers(pipeline) as ex:
        gateway = _gateway(open_source(os.path.join(os.path.dirname(path), "raw.h5/data")), pipeline, ex.executor,
                           redis_server.client())
        try:
            frames = [request_frame(gateway, 0, settings) for _ in range(3)]  # the three orthoviews
            labels = [f.result(timeout=60) for f in frames]
            assert all(np.array_equal(x, labels[0]) for x in labels)
            assert gateway.status().computed == 4 + 4  # four probability blocks, four blocks of labels of one labelling
            probabilities = gateway.request("Probabilities", Roi((0, 0, 0, 0), (1, 24, 96, 96))).result(timeout=60)
            expected = independent_objects(probabilities[0], settings)
            ours = labels[0][0, ..., 0]
            assert (ours > 0).sum() > 100  # there are objects to compare
            assert np.mean((ours > 0) == (expected > 0)) > 0.995  # scipy's smoothing borders differ slightly
            assert abs(len(np.unique(ours)) - len(np.unique(expected))) <= 1
        finally:
            gateway.close()


@pytest.mark.timeout(120)
def test_a_stalled_cache_server_delays_but_neither_fails_the_request_nor_drops_workers(project, redis_server):
    path, image = project
    pipeline = _pipeline(path)
    roi = Roi((0, 0, 0, 0), (1, 24, 96, 96))
    with ZmqWithWorkers(pipeline) as ex:  # heartbeats every 0.2 s: a worker is dropped after 0.6 s of silence
        gateway = _gateway(open_source(os.path.join(os.path.dirname(path), "raw.h5/data")), pipeline, ex.executor,
                           redis_server.client(socket_timeout=10, socket_connect_timeout=10))
        try:
            expected = whole_image(pipeline, image)
            server = psutil.Process(redis_server.pid)
            server.suspend()  # SIGSTOP, as a swapping or overloaded Redis
            resume = threading.Timer(3.0, server.resume)
            resume.start()
            try:
                request = gateway.request("Probabilities", roi)  # looks up on this thread: blocks meanwhile
            finally:
                resume.join()
            assert np.allclose(request.result(timeout=60), expected, atol=1e-6)
            assert len(ex.status().workers) == 1 and ex.status().redispatched == 0
        finally:
            gateway.close()


@pytest.mark.timeout(120)
def test_a_cache_server_restarted_mid_request_is_ridden_out(project, redis_server):
    path, image = project
    pipeline = _pipeline(path)
    roi = Roi((0, 0, 0, 0), (1, 24, 96, 96))
    with ZmqWithWorkers(pipeline) as ex:
        gateway = _gateway(open_source(os.path.join(os.path.dirname(path), "raw.h5/data")), pipeline, ex.executor,
                           redis_server.client(socket_timeout=5, socket_connect_timeout=5))
        try:
            os.kill(redis_server.pid, signal.SIGKILL)
            restart = threading.Timer(2.0, redis_server.ensure_running)  # back on the same socket, empty
            restart.start()
            try:
                request = gateway.request("Probabilities", roi)  # retried on this thread while the server is down
            finally:
                restart.join()
            assert np.allclose(request.result(timeout=60), whole_image(pipeline, image), atol=1e-6)
        finally:
            gateway.close()


@pytest.mark.timeout(120)
def test_a_cache_server_that_refuses_writes_still_gets_blocks_computed_and_delivered(project, redis_server, caplog):
    path, image = project
    pipeline = _pipeline(path)
    client = redis_server.client()
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")  # every write: OOM command not allowed
    with ZmqWithWorkers(pipeline) as ex:
        gateway = _gateway(open_source(os.path.join(os.path.dirname(path), "raw.h5/data")), pipeline, ex.executor,
                           client)
        try:
            values = gateway.request("Probabilities", Roi((0, 0, 0, 0), (1, 24, 96, 96))).result(timeout=60)
            assert np.allclose(values, whole_image(pipeline, image), atol=1e-6)
            assert gateway.status().computed == 4 and client.dbsize() == 0
            assert sum("refuses writes" in r.message for r in caplog.records) == 1  # one warning, not one per block
        finally:
            gateway.close()


@pytest.mark.timeout(180)
def test_two_exports_of_one_volume_share_the_work(project, redis_server, tmp_path):
    path, _ = project
    pipeline = _pipeline(path)
    raw = os.path.join(os.path.dirname(path), "raw.h5/data")
    with ZmqWithWorkers(pipeline, workers=2) as ex:
        gateways = [Gateway(open_source(raw), pipeline, ex.executor, BlockCache(redis_server.client()),
                            GatewayConfig((1, 3, 24, 24))) for _ in range(2)]
        try:
            options = [ExportOptions(fmt="npy", filename_pattern=str(tmp_path / f"out{i}"), progress=False,
                                     block_shape=(1, 3, 24, 24)) for i in range(2)]
            with ThreadPoolExecutor(2) as pool:  # the second starts while the first holds claims
                first = pool.submit(run_export, gateways[0], "raw", options[0], max_in_flight=4)
                wait_for(lambda: gateways[0].status().misses >= 4, 30, interval=0.005,
                         message=lambda: f"the first export claimed too few blocks: {gateways[0].status()}")
                results = [run_export(gateways[1], "raw", options[1], max_in_flight=4), first.result(timeout=120)]
            computed = [g.status().computed for g in gateways]
            assert sum(computed) == results[0].blocks == 128  # no block twice
            assert min(computed) >= 16, computed  # both did a share, neither only waited for the other
            assert np.array_equal(np.load(tmp_path / "out0.npy"), np.load(tmp_path / "out1.npy"))
        finally:
            for g in gateways:
                g.close()


@pytest.mark.timeout(120)
def test_closing_a_local_pool_never_waits_on_a_stuck_compute_process(project):
    """A compute process that never finishes its task (stopped here; in the field, one killed while writing
    its result leaves the pool's reader blocked) must not hold up closing: it is killed after the grace time."""
    from backend.config import WorkerConfig
    from backend.distributed.local_executor import LocalExecutor

    path, image = project
    pipeline = _pipeline(path)
    pool = LocalExecutor(pipeline, workers=1, config=WorkerConfig(stop_grace_s=0.5))
    assert pool.wait_ready(60)
    compute = compute_processes(psutil.Process())
    assert len(compute) == 1
    os.kill(compute[0].pid, signal.SIGSTOP)
    pool.submit(_task(pipeline, image))
    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < 5
    assert not compute[0].is_running() or compute[0].status() == psutil.STATUS_ZOMBIE
