"""Faults during web reads: a worker, the cache server or the server itself killed while zarr clients read.

Answers stay equal to the export (blocks are re-dispatched, the cache server restarted); a killed server
leaves nothing running and its clients get an error, not a hang.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
import zarr
from numcodecs import Blosc

from backend.config import WebConfig
from backend.io.sources.arrays import ArraySource
from backend.service.gateway import Gateway, GatewayConfig
from backend.web.catalog import Lane
from backend.web.server import WebServer, WebSettings
from tests.conftest import run_cli
from tests.fakes import FakeCache, FakeExecutor, FakePipeline
from tests.helpers import wait_for
from tests.integration.test_executor import small_project
from tests.integration.test_faults import FEATURES, alive, assert_all_gone
from tests.integration.webserver import ServeProcess, http_get
from tests.integration.workers import compute_processes

pytestmark = pytest.mark.timeout(400)
BLOCKS = "32,64,64"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("web-faults")), shape=(64, 256, 256), selection=FEATURES)[0]


@pytest.fixture(scope="module")
def exported(project, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("web-faults-export") / "out")
    result = run_cli("--headless", "--no-progress", "--project", project, "--output_format", "npy",
                     "--output_filename_format", out, "--block_shape", BLOCKS, "--workers", "2")
    assert result.returncode == 0, result.stderr
    return np.moveaxis(np.load(out + ".npy"), -1, 0)  # czyx, as served


class Reader(threading.Thread):
    """A zarr client reading the whole probabilities array in the background."""

    def __init__(self, server: ServeProcess):
        super().__init__(daemon=True)
        self.array = zarr.open_array(server.url + "/zarr/0/probabilities/0", mode="r", zarr_format=2)
        self.values: np.ndarray | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.values = self.array[:]
        except BaseException as exc:  # reported by the test
            self.error = exc


def _computed(server: ServeProcess) -> int:
    found = re.search(r"^ilastik_blocks_computed_total (\S+)", server.get("/metrics")[1].decode(), re.M)
    return int(float(found.group(1))) if found else 0


def _tree(server: ServeProcess) -> list[psutil.Process]:
    root = psutil.Process(server.process.pid)
    return [root, *root.children(recursive=True)]


def _named(server: ServeProcess, marker: str) -> list[psutil.Process]:
    return [p for p in _tree(server) if marker in " ".join(p.cmdline())]


def test_a_worker_killed_during_zarr_reads_changes_no_answer(project, exported):
    with ServeProcess(project, "--workers", "2", "--block_shape", BLOCKS) as server:
        reader = Reader(server)
        wait_for(lambda: _computed(server) >= 2, 120, interval=0.05,
                 message=lambda: f"too few blocks computed: {_computed(server)}")
        worker = _named(server, "ilastik_desktop.cli.worker")[0]
        compute = compute_processes(worker)
        assert reader.is_alive()  # still reading
        worker.kill()  # the local worker, with the blocks it had in hand
        reader.join(timeout=300)
        assert not reader.is_alive() and reader.error is None, reader.error
        assert np.array_equal(reader.values, exported)
        assert_all_gone({p.pid for p in compute} | {worker.pid}, within=10)
        assert server.get("/health")[0] == 200
    assert not server.left_running


def test_the_cache_server_killed_during_zarr_reads_is_restarted_and_answers_stay_right(project, exported):
    with ServeProcess(project, "--workers", "2", "--block_shape", BLOCKS) as server:
        reader = Reader(server)
        wait_for(lambda: _computed(server) >= 2, 120, interval=0.05,
                 message=lambda: f"too few blocks computed: {_computed(server)}")
        redis_server = _named(server, "redis-server")[0]
        assert reader.is_alive()
        redis_server.kill()
        reader.join(timeout=300)
        assert not reader.is_alive() and reader.error is None, reader.error
        assert np.array_equal(reader.values, exported)
        restarted = wait_for(lambda: [p for p in _named(server, "redis-server") if p.pid != redis_server.pid], 30,
                             interval=0.05, message="the cache server was not restarted")
        assert restarted and server.get("/health")[0] == 200
        again = zarr.open_array(server.url + "/zarr/0/probabilities/0", mode="r", zarr_format=2)[:]
        assert np.array_equal(again, exported)
    assert not server.left_running


def test_kill_9_of_the_server_during_zarr_reads_fails_the_client_and_leaves_nothing_running(project):
    server = ServeProcess(project, "--workers", "2", "--block_shape", BLOCKS)
    try:
        reader = Reader(server)
        wait_for(lambda: _computed(server) >= 1, 120, interval=0.05, message="no block was computed")
        seen = {p.pid for p in _tree(server)}
        assert len(seen) >= 5  # serve, redis-server, worker, two compute processes
        assert reader.is_alive()
        os.kill(server.process.pid, signal.SIGKILL)  # the server alone, as the OOM killer would
        server.process.wait(timeout=10)
        reader.join(timeout=120)
        assert not reader.is_alive() and reader.error is not None  # an error, not a hang
        assert_all_gone(seen - {server.process.pid}, within=10)
    finally:
        server.stop()
    assert alive(seen - {server.process.pid}) == []


# -- races and limits, in one process on the in-memory fakes (tasks finish when the test says) -----------------
class World:
    """A real web server over one lane whose gateway runs on the fake cache and executor."""

    def __init__(self, limits: WebConfig | None = None, shape: tuple[int, int, int] = (4, 64, 64)):
        self.executor, self.cache = FakeExecutor(), FakeCache()
        source = ArraySource(np.zeros(shape, np.uint8), "zyx")
        self.gateway = Gateway(source, A, self.executor, self.cache, GatewayConfig((1, 2, 32, 32)))
        settings = WebSettings(port=0, limits=limits or WebConfig())
        self.server = WebServer([Lane(0, "fake", self.gateway)], {"classes": []}, settings, "test").start()

    def get(self, path: str, timeout: float = 30) -> tuple[int, bytes, dict]:
        return http_get(self.server.link + path, timeout=timeout)

    def finish_all(self) -> int:
        """Finish every task waiting now; how many."""
        return sum(self.executor.finish(job) for job in self.executor.pending())

    def close(self) -> None:
        self.server.stop()
        self.gateway.close()
        self.executor.close()


A, B = FakePipeline("A"), FakePipeline("B")


@pytest.fixture
def world():
    made = []

    def make(**kwargs) -> World:
        made.append(World(**kwargs))
        return made[-1]

    yield make
    for each in made:
        each.close()


def test_the_etag_and_the_chunk_come_from_one_snapshot_when_a_retrain_lands_between_them(world):
    """A classifier swapped after the ETag was taken but before the chunk was asked for (live training): the
    chunk is still computed by the classifier its ETag names, and the chunk memory keeps it under that tag."""
    fake = world()
    request = fake.gateway.request

    def retrained_meanwhile(*args, **kwargs):
        fake.gateway.request = request  # once
        fake.gateway.set_pipeline(B)
        return request(*args, **kwargs)

    fake.gateway.request = retrained_meanwhile
    reader = ThreadPoolExecutor(1)
    answer = reader.submit(fake.get, "/zarr/0/probabilities/0/0.0.0.0")
    job = wait_for(lambda: fake.executor.pending(), 10, message="no task was submitted")[0]
    fake.executor.finish(job)
    status, body, headers = answer.result(timeout=30)
    reader.shutdown()
    values = np.frombuffer(Blosc().decode(body), np.float32)
    assert status == 200 and A.fingerprint() in headers["ETag"] and np.all(values == A.value())
    status, body, headers = wait_for(lambda: _finished(fake, "/zarr/0/probabilities/0/0.0.0.0"), 30)
    assert B.fingerprint() in headers["ETag"] and np.all(np.frombuffer(Blosc().decode(body), np.float32) == B.value())


def _finished(fake: World, path: str):
    """The answer to ``path``, finishing the tasks it waits for."""
    with ThreadPoolExecutor(1) as reader:
        answer = reader.submit(fake.get, path)
        while not answer.done():
            fake.finish_all()
            wait_for(lambda: answer.done() or fake.executor.pending(), 10, interval=0.005)
        return answer.result()


def test_a_client_that_leaves_cancels_its_region_blocks_and_all(world):
    fake = world()
    token = fake.server.token
    client = socket.create_connection(("127.0.0.1", fake.server.port))
    client.sendall(f"GET /api/v1/lanes/0/probabilities?start=0,0,0&stop=4,64,64 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Authorization: Bearer {token}\r\n\r\n".encode())
    jobs = wait_for(lambda: fake.executor.pending(), 10, message="no task was submitted")
    client.close()
    wait_for(lambda: fake.gateway.status().blocks_in_progress == 0, 10,
             message=lambda: f"{fake.gateway.status().blocks_in_progress} blocks still wanted")
    assert all(job.future.cancelled() for job in jobs)


def test_a_request_that_finds_no_room_in_the_memory_budget_gets_503_with_retry_after(world):
    fake = world(limits=WebConfig(memory_budget_mb=1, budget_wait_s=0), shape=(4, 256, 256))
    with ThreadPoolExecutor(1) as reader:  # 2 slabs of 1 MB: the whole budget
        first = reader.submit(fake.get, "/api/v1/lanes/0/probabilities?start=0,0,0&stop=4,256,256")
        wait_for(lambda: fake.executor.pending(), 10, message="the first request submitted nothing")
        status, body, headers = fake.get("/zarr/0/probabilities/0/0.0.0.0", timeout=10)
        assert status == 503 and headers["Retry-After"] and b"busy" in body
        while not first.done():
            fake.finish_all()
            wait_for(lambda: first.done() or fake.executor.pending(), 10, interval=0.005)
        assert first.result()[0] == 200
    assert _finished(fake, "/zarr/0/probabilities/0/0.0.0.0")[0] == 200
    metrics = fake.get("/metrics")[1].decode()
    assert "ilastik_http_budget_refused 1.0" in metrics and "ilastik_http_budget_bytes 0.0" in metrics


def test_stopping_during_a_read_that_waits_for_blocks_takes_the_grace_period_not_the_read(world):
    """What SIGTERM to ``serve`` does: the read in progress gets web.stop_grace_s (2 s) and is then cancelled,
    with its blocks; the server's thread ends (it waited for the read, up to 60 s)."""
    fake = world()
    with ThreadPoolExecutor(1) as reader:
        answer = reader.submit(fake.get, "/api/v1/lanes/0/probabilities?start=0,0,0&stop=4,64,64")
        wait_for(lambda: fake.executor.pending(), 10, message="no task was submitted")
        started = time.monotonic()
        fake.server.stop()
        stopped = time.monotonic() - started
        assert stopped < 6 and not fake.server._thread.is_alive(), stopped
        with pytest.raises(OSError):  # the client is told, not left waiting
            answer.result(timeout=10)
    assert fake.gateway.status().blocks_in_progress == 0


def test_at_the_connection_cap_with_every_connection_busy_a_new_one_is_refused_with_503(world):
    fake = world(limits=WebConfig(max_connections=4))
    with ThreadPoolExecutor(4) as readers:
        busy = [readers.submit(fake.get, f"/api/v1/lanes/0/probabilities?start={z},0,0&stop={z + 1},64,64")
                for z in range(4)]
        wait_for(lambda: len(fake.server.guard.busy) == 4, 10, message="the four reads are not all in progress")
        status, _, headers = fake.get("/health", timeout=10)
        assert status == 503 and headers["Retry-After"] == "1"
        while not all(answer.done() for answer in busy):
            fake.finish_all()
            wait_for(lambda: all(a.done() for a in busy) or fake.executor.pending(), 10, interval=0.005)
        assert [answer.result()[0] for answer in busy] == [200] * 4
    assert fake.get("/health")[0] == 200
    assert 'ilastik_http_connections_dropped_total{reason="refused"} 1.0' in fake.get("/metrics")[1].decode()
