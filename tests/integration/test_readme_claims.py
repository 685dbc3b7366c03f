"""What the README claims and nothing else checked: warm-up before READY, allow-list files on both sides,
``--connect HOST:PORT,KEY``, ``--lane`` and ``--output_internal_path``."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from backend.config import ExecutorConfig
from backend.distributed.zmq_executor import ZmqExecutor
from tests.conftest import run_cli
from tests.integration.test_curve import gateway_identity, worker_key
from tests.integration.test_executor import _pipeline, _task, small_project
from tests.integration.workers import free_port, kill_worker, start_worker, wait_listening


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("claims")), shape=(24, 96, 96))


@pytest.mark.timeout(120)
def test_workers_announce_themselves_only_once_their_compute_processes_are_warm(project):
    path, image = project
    pipeline = _pipeline(path)
    with ZmqExecutor(config=ExecutorConfig(heartbeat_s=0.2)) as ex:
        ex.add_pipeline(pipeline)
        worker = start_worker("--connect", ex.address, processes=1)
        try:
            assert ex.wait_for_workers(1, timeout=60)
            first = ex.submit(_task(pipeline, image))
            first.result(timeout=60)
            later = [ex.submit(_task(pipeline, image)) for _ in range(3)]
            typical = max(f.result(timeout=60) is not None and f.compute_s for f in later)
            # a cold process would spend its first task loading and compiling kernels (seconds)
            assert first.compute_s < 3 * typical + 0.2, (first.compute_s, typical)
        finally:
            kill_worker(worker)


@pytest.mark.timeout(180)
def test_allow_list_files_on_both_sides(project, tmp_path):
    """authorized_workers (the app's side) and authorized_gateways (the worker's side), one key per line."""
    path, image = project
    pipeline = _pipeline(path)
    expected = pipeline.run(_task(pipeline, image))
    app_dir, worker_dir = tmp_path / "app", tmp_path / "worker"
    gateway_key = gateway_identity(app_dir).public
    (app_dir / "authorized_workers").write_text(f"# our lab's workers\n{worker_key(worker_dir).decode()}  # gpu1\n")
    (worker_dir / "authorized_gateways").write_text(gateway_key.decode() + "\n")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    worker = start_worker("--listen", endpoint, "--config-dir", str(worker_dir))  # no --gateway-key: the file
    try:
        wait_listening(endpoint)
        result = run_cli("--headless", "--no-progress", "--project", path, "--output_format", "npy",
                         "--output_filename_format", str(tmp_path / "out"), "--workers", "0", "--config-dir",
                         str(app_dir), "--connect", f"{endpoint},{worker_key(worker_dir).decode()}",
                         "--block_shape", "8,32,32", timeout=180)
        assert result.returncode == 0, result.stderr
        assert "1 worker process)" in result.stderr
        exported = np.load(tmp_path / "out.npy")
        assert exported.shape == (24, 96, 96, 2)
        assert np.allclose(exported[4:12, 8:40, 16:48], expected, atol=1e-6)
    finally:
        kill_worker(worker)


def test_lane_option(project, tmp_path):
    path, _ = project
    result = run_cli("--headless", "--no-progress", "--project", path, "--lane", "1")
    assert result.returncode == 2 and "no lane 1 (the project has 1)" in result.stderr
    result = run_cli("--headless", "--no-progress", "--project", path, "--lane", "0", "--output_format", "npy",
                     "--output_filename_format", str(tmp_path / "lane0"), "--workers", "1", timeout=180)
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "lane0.npy").shape == (24, 96, 96, 2)


def test_output_internal_path(project, tmp_path):
    path, _ = project
    result = run_cli("--headless", "--no-progress", "--project", path, "--output_internal_path", "results/probs",
                     "--output_filename_format", str(tmp_path / "out"), "--workers", "1", timeout=180)
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert f["results/probs"].shape == (24, 96, 96, 2) and "exported_data" not in f
