"""What a listening ``ilastik-worker`` says: one line once it is up (address, key, processes), nothing
alarming for the app's connection test (a TCP connection closed before the encrypted handshake), and
still an error for a gateway that fails the handshake."""

import threading

import numpy as np
import pytest

from backend.config import ExecutorConfig
from backend.distributed.zmq_executor import ZmqExecutor
from ilastik_desktop.runtime.services import _probe
from tests.helpers import wait_for
from tests.integration.test_curve import gateway_identity, worker_key
from tests.integration.test_executor import _pipeline, _task, small_project
from tests.integration.workers import free_port, kill_worker, start_worker

pytestmark = pytest.mark.timeout(180)
FAILED = "failed the encrypted handshake"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("listen-log")))


def listening_worker(tmp_path, gateway_key: bytes, *args: str, processes: int = 2):
    """A worker listening on a random loopback port for ``gateway_key``: (process, endpoint, its key, the
    lines of its stderr so far, growing)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = start_worker("--listen", endpoint, "--gateway-key", gateway_key.decode(), "--config-dir",
                        str(tmp_path / "worker"), *args, processes=processes)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    return proc, endpoint, worker_key(tmp_path / "worker"), lines


@pytest.mark.parametrize("processes, counted", [(2, "2 processes"), (1, "1 process")])
def test_a_listening_worker_says_once_where_it_listens_with_its_key(tmp_path, processes, counted):
    gateway = gateway_identity(tmp_path / "gateway")
    proc, endpoint, key, lines = listening_worker(tmp_path, gateway.public, processes=processes)
    try:
        expected = f"ilastik-worker: listening at {endpoint}, public key {key.decode()}, {counted}\n"
        wait_for(lambda: expected in lines, 60, interval=0.05, message=lambda: f"no start line: {lines}")
        assert lines == [expected]  # nothing else without --verbose
    finally:
        kill_worker(proc)


def test_the_apps_connection_test_is_no_failed_handshake_but_a_wrong_key_is(project, tmp_path):
    path, image = project
    pipeline = _pipeline(path)
    gateway = gateway_identity(tmp_path / "gateway")
    proc, endpoint, key, lines = listening_worker(tmp_path, gateway.public, "--verbose")
    try:
        wait_for(lambda: any("listening at" in line for line in lines), 60, interval=0.05,
                 message=lambda: f"no start line: {lines}")
        _probe(endpoint)  # what Connect workers does before connecting: a TCP connection, closed at once
        with ZmqExecutor(bind=None, identity=gateway, config=ExecutorConfig(heartbeat_s=0.2)) as ex:
            ex.add_pipeline(pipeline)
            ex.connect(endpoint, server_key=key)
            assert ex.wait_for_workers(2, timeout=60)
            assert np.array_equal(ex.submit(_task(pipeline, image)).result(timeout=60),
                                  pipeline.run(_task(pipeline, image)))
        wait_for(lambda: any("closed before the encrypted handshake (a connection test)" in line for line in lines),
                 10, interval=0.05, message=lambda: f"the probe was not seen as a connection test: {lines}")
        assert not any(FAILED in line for line in lines), lines

        wrong = gateway_identity(tmp_path / "gateway")  # the right gateway, told another worker key
        with ZmqExecutor(bind=None, identity=wrong, config=ExecutorConfig(heartbeat_s=0.2)) as ex:
            ex.connect(endpoint, server_key=gateway.public)
            wait_for(lambda: any(FAILED in line for line in lines), 20, interval=0.05,
                     message=lambda: f"a real handshake failure was not logged: {lines[-5:]}")
    finally:
        kill_worker(proc)
