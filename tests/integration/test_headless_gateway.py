"""The headless export through the gateway: remote workers both ways, a shared cache, Objects."""

import dataclasses
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tifffile

from backend.cache.redis_server import EmbeddedRedis, RedisSettings
from backend.compute.threshold import ThresholdSettings, threshold_frame
from backend.io.project import open_project
from tests.conftest import REPO, run_cli
from tests.helpers import wait_for
from tests.integration.test_executor import small_project
from tests.integration.test_faults import Run, assert_all_gone
from tests.integration.test_zmq import free_port
from tests.integration.workers import compute_processes, kill_worker, start_worker


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("headless")), shape=(24, 96, 96))[0]


def export(tmp_path, project, name, *args):
    result = run_cli("--headless", "--no-progress", "--project", project, "--output_format", "npy",
                     "--output_filename_format", str(tmp_path / name), "--block_shape", "12,48,48", *args)
    assert result.returncode == 0, result.stderr
    return np.load(tmp_path / f"{name}.npy"), result.stderr


@pytest.fixture(scope="module")
def local_result(project, tmp_path_factory):
    return export(tmp_path_factory.mktemp("local"), project, "local", "--workers", "1")[0]


@pytest.mark.timeout(240)
def test_export_on_a_remote_worker_the_gateway_connects_to(project, local_result, tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    worker = start_worker("--listen", endpoint)
    try:
        ours, err = export(tmp_path, project, "remote", "--workers", "0", "--connect", endpoint)
    finally:
        kill_worker(worker)
    assert np.array_equal(ours, local_result)
    assert "1 worker process)" in err


@pytest.mark.timeout(240)
def test_export_on_an_authenticated_worker_that_connects_to_the_gateway(project, local_result, tmp_path):
    gateway_dir, worker_dir = tmp_path / "gateway", tmp_path / "worker"

    def key(module, folder):
        out = subprocess.run([sys.executable, "-m", module, "--print-key", "--config-dir", str(folder)], cwd=REPO,
                             capture_output=True, text=True, timeout=60, check=True)
        return out.stdout.strip()

    gateway_key, worker_key = key("ilastik_desktop", gateway_dir), key("ilastik_desktop.cli.worker", worker_dir)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    worker = start_worker("--connect", endpoint, "--gateway-key", gateway_key, "--config-dir", str(worker_dir))
    try:
        ours, err = export(tmp_path, project, "secure", "--workers", "0", "--listen", endpoint, "--worker-key",
                           worker_key, "--config-dir", str(gateway_dir))
    finally:
        kill_worker(worker)
    assert np.array_equal(ours, local_result)
    assert "accepting workers at" in err and gateway_key in err and "allow its key" not in err  # allowed already

    worker = start_worker("--connect", endpoint, "--gateway-key", gateway_key, "--config-dir", str(worker_dir))
    try:  # as the printed line says, without --worker-key here
        refused = run_cli("--headless", "--no-progress", "--project", project, "--output_format", "npy",
                          "--output_filename_format", str(tmp_path / "refused"), "--workers", "0", "--listen",
                          endpoint, "--worker-timeout", "8", "--config-dir", str(gateway_dir))
    finally:
        kill_worker(worker)
    assert refused.returncode == 2, refused.stderr
    assert "allow its key here with --worker-key KEY" in refused.stderr
    assert (f"refused the unknown worker key(s) {worker_key}: allow a worker with --worker-key KEY"
            in refused.stderr.splitlines()[-1]), refused.stderr


@pytest.mark.timeout(240)
def test_a_second_export_with_a_shared_cache_computes_nothing(project, local_result, tmp_path):
    with EmbeddedRedis(RedisSettings(maxmemory_mb=128)) as server:
        first, err1 = export(tmp_path, project, "first", "--workers", "1", "--redis-url", server.url)
        second, err2 = export(tmp_path, project, "second", "--workers", "1", "--redis-url", server.url)
    assert np.array_equal(first, local_result) and np.array_equal(second, local_result)
    assert "0 from the cache" in err1
    assert "0 computed" in err2 and "8 from the cache" in err2


@pytest.mark.timeout(240)
def test_objects_export_thresholds_the_probabilities(project, tmp_path):
    probabilities, _ = export(tmp_path, project, "probs", "--workers", "1")
    objects, err = export(tmp_path, project, "objects", "--workers", "1", "--export_source", "Objects",
                          "--threshold", "channel=1,low=0.6,min_size=5")
    settings = dataclasses.replace(open_project(project).threshold or ThresholdSettings(), channel=1, low=0.6,
                                   min_size=5)
    expected = threshold_frame(probabilities, settings)
    assert objects.dtype == np.uint32 and objects.shape == probabilities.shape[:-1] + (1,)
    assert np.array_equal(objects[..., 0], expected) and objects.max() > 1
    assert "(1 frame," in err


@pytest.mark.timeout(240)
@pytest.mark.parametrize("fmt", ["hdf5", "tif"])
def test_a_projects_objects_export_records_its_highest_object_id(project, tmp_path, fmt):
    """As the --prediction_maps Objects output does: an attribute (HDF5; TIFF: its JSON description) and the
    summary line."""
    result = run_cli("--headless", "--no-progress", "--project", project, "--output_format", fmt,
                     "--output_filename_format", str(tmp_path / "objects"), "--block_shape", "12,48,48",
                     "--workers", "1", "--export_source", "Objects", "--threshold", "channel=1,low=0.6,min_size=5")
    assert result.returncode == 0, result.stderr
    if fmt == "hdf5":
        with h5py.File(tmp_path / "objects.h5", "r") as f:
            labels, recorded = f["exported_data"][()], f["exported_data"].attrs["max_object_id"]
    else:
        labels = tifffile.imread(tmp_path / "objects.tif")
        recorded = json.loads(tifffile.tiffcomment(tmp_path / "objects.tif"))["max_object_id"]
    assert labels.max() > 1 and recorded == labels.max()
    assert f"Mvoxel/s; highest object ID {labels.max()}; " in result.stderr


@pytest.mark.parametrize("args, message", [
    (("--redis-url", "redis://127.0.0.1:1/0"), "cannot use the Redis server at redis://127.0.0.1:1/0"),
    (("--connect", "tcp://10.20.30.40:5555"), "give the worker's public key"),
    (("--connect", "tcp://10.20.30.40:5555,notakey"), "not a valid worker key"),
    (("--workers", "0"), "--workers must be at least 1"),
    (("--worker-key", "short"), "not a valid worker key"),
    (("--threshold", "colour=red"), "--threshold 'colour=red': expected NAME=VALUE"),
])
def test_compute_options_errors_are_one_clear_line(project, args, message):
    result = run_cli("--headless", "--no-progress", "--project", project, *args, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_nothing_is_left_running_after_an_export(project, tmp_path):
    """Only this export's own process tree is looked at (not every process on the machine by name)."""
    run = Run("--headless", "--no-progress", "--project", project, "--output_format", "npy",
              "--output_filename_format", str(tmp_path / "clean"), "--workers", "1")
    try:
        run.find("redis-server")
        workers = run.find("ilastik_desktop.cli.worker")
        wait_for(lambda: compute_processes(workers[0]), 60, interval=0.05, message="no compute process")
        run.tree()
        assert run.finish() == 0, "".join(run.stderr)
    finally:
        if run.process.poll() is None:
            run.kill()
    assert len(run.seen) >= 4  # app, redis-server, worker, compute process
    assert_all_gone(run.seen - {run.process.pid}, within=5)
    assert sorted(os.listdir(tmp_path)) == ["clean.npy"]
