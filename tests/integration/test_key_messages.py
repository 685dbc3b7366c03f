"""A wrong or unknown CurveZMQ key is reported where the user looks, naming the key to fix; never silence."""

from __future__ import annotations

import threading

import pytest

from backend.config import ExecutorConfig
from backend.distributed.zmq_executor import ZmqExecutor
from tests.conftest import run_cli
from tests.helpers import wait_for
from tests.integration.test_curve import gateway_identity, worker_key
from tests.integration.test_executor import small_project
from tests.integration.workers import free_port, kill_worker, start_worker, wait_listening


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("keys")), shape=(8, 32, 32))


def _stderr_lines(proc) -> list[str]:
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    return lines


def _wait_for_line(lines: list[str], text: str, timeout: float) -> str:
    return wait_for(lambda: next((line for line in list(lines) if text in line), None), timeout, interval=0.05,
                    message=lambda: f"no line with {text!r}: {lines[-5:]}")


def _wait_for_refusal(ex: ZmqExecutor, text: str, timeout: float) -> str:
    return wait_for(lambda: next((r for r in ex.status().refused if text in r), None), timeout,
                    message=lambda: f"no refusal with {text!r}: {ex.status().refused}")


@pytest.mark.timeout(120)
def test_connecting_worker_learns_that_its_key_is_not_allowed_or_the_gateway_key_is_wrong(tmp_path):
    gateway = gateway_identity(tmp_path / "gateway")  # allows no worker at all
    other = gateway_identity(tmp_path / "other")
    with ZmqExecutor(bind=None, identity=gateway, config=ExecutorConfig(heartbeat_s=0.2)) as ex:
        address = ex.listen("tcp://127.0.0.1:0")
        unknown = start_worker("--connect", address, "--gateway-key", gateway.public.decode(),
                               "--config-dir", str(tmp_path / "w1"))
        mistaken = start_worker("--connect", address, "--gateway-key", other.public.decode(),
                                "--config-dir", str(tmp_path / "w2"))
        try:
            line = _wait_for_line(_stderr_lines(unknown), "refused this worker's key", 60)
            assert worker_key(tmp_path / "w1").decode() in line and "--worker-key" in line
            line = _wait_for_line(_stderr_lines(mistaken), "handshake with the gateway", 60)
            assert address in line and "--gateway-key" in line
            why = _wait_for_refusal(ex, "a worker failed the encrypted handshake", 10)  # the app's side says it too
            assert gateway.public.decode() in why
        finally:
            kill_worker(unknown)
            kill_worker(mistaken)


@pytest.mark.timeout(120)
def test_gateway_learns_that_a_listening_worker_has_another_key_or_refuses_ours(tmp_path):
    gateway = gateway_identity(tmp_path / "gateway")
    stranger = gateway_identity(tmp_path / "stranger")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    worker = start_worker("--listen", endpoint, "--gateway-key", stranger.public.decode(), "--config-dir",
                          str(tmp_path / "worker"))
    try:
        wait_listening(endpoint)
        with ZmqExecutor(bind=None, identity=gateway, config=ExecutorConfig(heartbeat_s=0.2)) as ex:
            ex.connect(endpoint, server_key=worker_key(tmp_path / "worker"))
            why = _wait_for_refusal(ex, "refused our key", 30)
            assert endpoint in why and gateway.public.decode() in why
        with ZmqExecutor(bind=None, identity=stranger, config=ExecutorConfig(heartbeat_s=0.2)) as ex:
            ex.connect(endpoint, server_key=gateway.public)  # not the worker's key
            why = _wait_for_refusal(ex, "handshake failed", 30)
            assert endpoint in why and "--print-key" in why
    finally:
        kill_worker(worker)


@pytest.mark.timeout(180)
def test_headless_connect_with_a_wrong_key_names_the_worker_and_the_key(project, tmp_path):
    path, _ = project
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    app_dir = tmp_path / "app"
    worker = start_worker("--listen", endpoint, "--gateway-key", gateway_identity(app_dir).public.decode(),
                          "--config-dir", str(tmp_path / "worker"))
    worker_lines = _stderr_lines(worker)
    try:
        wait_listening(endpoint)
        wrong = gateway_identity(tmp_path / "someone").public.decode()
        result = run_cli("--headless", "--no-progress", "--project", path, "--workers", "0", "--config-dir",
                         str(app_dir), "--connect", f"{endpoint},{wrong}", "--worker-timeout", "10",
                         "--output_filename_format", str(tmp_path / "out"), timeout=120)
        assert result.returncode == 2, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert endpoint in last and "--print-key" in last and "ipc://" not in last, result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "out.h5").exists()
        line = _wait_for_line(worker_lines, "a gateway failed the encrypted handshake", 10)  # and the worker's side
        assert worker_key(tmp_path / "worker").decode() in line
    finally:
        kill_worker(worker)
