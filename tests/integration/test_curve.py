"""CurveZMQ between gateway and workers: keys on first use, allow-lists both ways, clear refusals."""

import os
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

from backend.config import ExecutorConfig
from backend.distributed.security import CurveIdentity, KeyStore, is_local
from backend.distributed.zmq_executor import ZmqExecutor
from tests.conftest import REPO
from tests.helpers import wait_for
from tests.integration.test_executor import _pipeline, _task, small_project
from tests.integration.test_zmq import free_port
from tests.integration.workers import kill_worker, start_worker


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("curve")))


def worker_key(config_dir) -> bytes:
    out = subprocess.run([sys.executable, "-m", "ilastik_desktop.cli.worker", "--print-key", "--config-dir",
                          str(config_dir)], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip().encode()


def gateway_identity(config_dir, *allowed: bytes) -> CurveIdentity:
    public, secret = KeyStore(str(config_dir)).keypair("gateway")
    return CurveIdentity(public, secret, set(allowed))


def test_keys_are_created_once_with_a_private_secret(tmp_path):
    first = worker_key(tmp_path)
    assert len(first) == 40 and worker_key(tmp_path) == first
    secret = tmp_path / "keys" / "worker.key_secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600


def test_endpoint_locality():
    assert is_local("ipc:///tmp/x") and is_local("tcp://127.0.0.1:5") and is_local("tcp://localhost:5")
    assert not is_local("tcp://*:5555") and not is_local("tcp://10.0.0.7:5555") and not is_local("tcp://host:1")


def test_remote_endpoint_without_key_is_a_clear_error():
    out = subprocess.run([sys.executable, "-m", "ilastik_desktop.cli.worker", "--connect", "tcp://10.9.8.7:5555"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--gateway-key" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.timeout(180)
def test_gateway_accepts_only_workers_whose_keys_it_was_given(project, tmp_path):
    path, image = project
    pipeline = _pipeline(path)
    good, bad = tmp_path / "good", tmp_path / "bad"
    identity = gateway_identity(tmp_path / "gateway", worker_key(good))
    gateway_key = identity.public.decode()
    with ZmqExecutor(bind=None, identity=identity, config=ExecutorConfig(heartbeat_s=0.2)) as ex:
        ex.add_pipeline(pipeline)
        address = ex.listen("tcp://127.0.0.1:0")
        intruders = [start_worker("--connect", address, "--gateway-key", gateway_key, "--config-dir", str(bad)),
                     start_worker("--connect", address)]  # wrong key, and no encryption at all
        try:
            assert not ex.wait_for_workers(1, timeout=3)  # neither of them may register
            assert any(worker_key(bad).decode() in r for r in ex.status().refused)
            proc = start_worker("--connect", address, "--gateway-key", gateway_key, "--config-dir", str(good))
            try:
                assert ex.wait_for_workers(1, timeout=60)
                expected = pipeline.run(_task(pipeline, image))
                assert np.array_equal(ex.submit(_task(pipeline, image)).result(timeout=60), expected)
                assert len(ex.status().workers) == 1
            finally:
                kill_worker(proc)
        finally:
            for intruder in intruders:
                kill_worker(intruder)


@pytest.mark.timeout(180)
def test_listening_worker_accepts_only_its_gateways(project, tmp_path):
    path, image = project
    pipeline = _pipeline(path)
    trusted = gateway_identity(tmp_path / "trusted")
    stranger = gateway_identity(tmp_path / "stranger")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = start_worker("--listen", endpoint, "--gateway-key", trusted.public.decode(), "--config-dir",
                        str(tmp_path / "worker"))
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    key = worker_key(tmp_path / "worker")
    try:
        # first: the worker is warm now
        with ZmqExecutor(bind=None, identity=trusted, config=ExecutorConfig(heartbeat_s=0.2)) as ex:
            ex.add_pipeline(pipeline)
            ex.connect(endpoint, server_key=key)
            assert ex.wait_for_workers(1, timeout=60)
            expected = pipeline.run(_task(pipeline, image))
            assert np.array_equal(ex.submit(_task(pipeline, image)).result(timeout=60), expected)
        with ZmqExecutor(bind=None, identity=stranger, config=ExecutorConfig(heartbeat_s=0.2)) as ex:
            ex.connect(endpoint, server_key=key)
            assert not ex.wait_for_workers(1, timeout=3)
            # its knocking arrived and was refused, not merely unanswered yet
            wait_for(lambda: any(stranger.public.decode() in line for line in lines), 10, interval=0.05,
                     message=lambda: f"the worker did not report the stranger's key: {lines[-5:]}")
            assert any("refused" in line and stranger.public.decode() in line for line in lines), lines[-5:]
    finally:
        kill_worker(proc)


def test_keys_beginning_with_a_dash_are_taken_as_keys(tmp_path):
    """A Z85 key may begin with '-' (1 in 85): argparse must not take it for an option."""
    key = "-" + worker_key(tmp_path)[1:].decode()  # a key of the right form that nobody holds
    out = subprocess.run([sys.executable, "-m", "ilastik_desktop.cli.worker", "--gateway-key", key, "--config-dir",
                          str(tmp_path), "--print-key"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "expected one argument" not in out.stderr, out.stderr
    app = subprocess.run([sys.executable, "-m", "ilastik_desktop", "--worker-key", key, "--config-dir",
                          str(tmp_path), "--print-key"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert app.returncode == 0 and "expected one argument" not in app.stderr, app.stderr


def test_processes_creating_the_key_pair_at_once_agree_on_one(tmp_path):
    """A worker started while its key is printed (a test, a script) must use the key that was printed."""
    from concurrent.futures import ThreadPoolExecutor

    for attempt in range(20):
        folder = str(tmp_path / str(attempt))
        barrier = threading.Barrier(8)

        def create(_, folder=folder, barrier=barrier):
            barrier.wait()
            return KeyStore(folder).keypair("worker")

        with ThreadPoolExecutor(8) as pool:
            pairs = set(pool.map(create, range(8)))
        assert len(pairs) == 1, f"attempt {attempt}: {len(pairs)} different key pairs"
        public, _ = pairs.pop()
        assert (tmp_path / str(attempt) / "keys" / "worker.key").read_bytes().strip() == public
    procs = [subprocess.Popen([sys.executable, "-m", "ilastik_desktop.cli.worker", "--print-key", "--config-dir",
                               str(tmp_path / "p")], cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    assert len({proc.communicate(timeout=60)[0].strip() for proc in procs}) == 1
