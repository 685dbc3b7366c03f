"""Faults during web reads: a worker, the cache server or the server itself killed while zarr clients read.

Answers stay equal to the export (blocks are re-dispatched, the cache server restarted); a killed server
leaves nothing running and its clients get an error, not a hang.
"""

from __future__ import annotations

import os
import re
import signal
import threading

import numpy as np
import psutil
import pytest
import zarr

from tests.conftest import run_cli
from tests.helpers import wait_for
from tests.integration.test_executor import small_project
from tests.integration.test_faults import FEATURES, alive, assert_all_gone
from tests.integration.webserver import ServeProcess
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
