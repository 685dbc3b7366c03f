"""Exports on Dask: a LocalCluster of real worker processes, a real scheduler process, job scripts.

The same exports through ZeroMQ workers and through Dask are equal bit for bit; a Dask worker killed
mid-export changes nothing; a scheduler that goes away ends the export with one line and no output.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, run_cli
from tests.helpers import wait_for
from tests.integration.test_executor import small_project
from tests.integration.test_faults import FEATURES, Run, assert_all_gone

pytestmark = pytest.mark.timeout(400)


def _export(tmp_path, name: str, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    out = str(tmp_path / name)
    result = run_cli("--headless", "--no-progress", "--output_format", "npy", "--output_filename_format", out, *args)
    return result, out + ".npy"


@pytest.mark.parametrize("which", ["seed", "3d"])
def test_dask_local_export_equals_the_zeromq_export(data_dir, tmp_path, which):
    if which == "seed":
        seed = os.path.join(data_dir, "seed")
        args = ("--project", os.path.join(seed, "pc.ilp"), "--raw_data", os.path.join(seed, "raw.h5/exported_data"))
    else:
        args = ("--project", os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp"), "--block_shape", "32,32,32")
    zmq, zmq_out = _export(tmp_path, "zmq", *args, "--workers", "2")
    dask, dask_out = _export(tmp_path, "dask", *args, "--dask", "local:2")
    assert zmq.returncode == 0 and dask.returncode == 0, zmq.stderr + dask.stderr
    assert "2 worker processes" in dask.stderr
    assert np.array_equal(np.load(zmq_out), np.load(dask_out))


@pytest.fixture(scope="module")
def project_and_image(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("dask")), shape=(64, 256, 256), selection=FEATURES)


@pytest.fixture(scope="module")
def project(project_and_image):
    return project_and_image[0]


def _args(project: str, out: str, *more: str) -> list[str]:
    return ["--headless", "--project", project, "--output_format", "npy", "--output_filename_format", out,
            "--block_shape", "32,64,64", *more]


def _dask_workers(run: Run) -> list:
    return [p for p in run.tree()[1:] if "redis-server" not in " ".join(p.cmdline())
            and "resource_tracker" not in " ".join(p.cmdline())]


def test_a_dask_worker_killed_mid_export_changes_nothing(project, tmp_path):
    reference, reference_out = _export(tmp_path, "reference", "--project", project, "--block_shape", "32,64,64",
                                       "--workers", "2")
    assert reference.returncode == 0, reference.stderr
    out = str(tmp_path / "out")
    run = Run(*_args(project, out, "--dask", "local:2"))
    try:
        run.wait_progress(2)
        workers = _dask_workers(run)
        assert len(workers) == 2, [p.cmdline() for p in workers]
        workers[0].kill()
        assert run.finish() == 0, "".join(run.stderr)
    finally:
        if run.process.poll() is None:
            run.kill()
    assert np.array_equal(np.load(out + ".npy"), np.load(reference_out))
    assert_all_gone(run.seen - {run.process.pid}, within=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def test_the_scheduler_gone_ends_the_export_with_one_line_and_no_output(project, tmp_path):
    address = f"tcp://127.0.0.1:{_free_port()}"
    scheduler = _start("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                       "--no-dashboard")
    worker = _start("distributed.cli.dask_worker", address, "--nthreads", "1", "--no-dashboard")
    out = str(tmp_path / "out")
    run = Run(*_args(project, out, "--dask", address))
    try:
        run.wait_progress(2, timeout=180)
        scheduler.kill()
        code = run.finish(timeout=180)
    finally:
        for process in (run.process, scheduler, worker):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    lines = [line for line in "".join(run.stderr).splitlines() if line.strip() and "%" not in line]
    assert code == 2 and "Dask scheduler" in lines[-1], lines[-5:]
    assert not [name for name in os.listdir(tmp_path) if name.startswith("out")]


def test_cluster_dry_run_prints_the_job_script_with_the_resources(tmp_path):
    result = run_cli("--headless", "--project", "p.ilp", "--cluster", "slurm", "--cluster-jobs", "4",
                     "--cluster-cores", "8", "--cluster-memory", "32GB", "--cluster-queue", "gpu",
                     "--cluster-walltime", "02:00:00", "--cluster-account", "lab42", "--cluster-dry-run")
    assert result.returncode == 0, result.stderr
    script = result.stdout
    for expected in ("#SBATCH -p gpu", "#SBATCH -A lab42", "#SBATCH -n 1", "#SBATCH --cpus-per-task=8",
                     "#SBATCH -t 02:00:00", "#SBATCH --mem=30G", "distributed.cli.dask_worker",
                     "--nworkers 8", "--nthreads 1"):
        assert expected in script, (expected, script)
    pbs = run_cli("--headless", "--project", "p.ilp", "--cluster", "pbs", "--cluster-cores", "4",
                  "--cluster-dry-run")
    assert pbs.returncode == 0 and "#PBS" in pbs.stdout and "ncpus=4" in pbs.stdout, pbs.stdout + pbs.stderr


def test_shared_filesystem_names_the_file_a_worker_cannot_open(project, tmp_path):
    raw = tmp_path / "moved.h5"
    raw.write_bytes(open(os.path.join(os.path.dirname(project), "raw.h5"), "rb").read())
    out = str(tmp_path / "out")
    run = Run(*_args(project, out, "--raw_data", f"{raw}/data", "--dask", "local:2", "--shared-filesystem"))
    try:
        wait_for(lambda: len(_dask_workers(run)) >= 2, 60, interval=0.05,
                 message=lambda: f"too few Dask workers started: {len(_dask_workers(run))}")
        raw.unlink()  # the app opened it; the workers, which read it themselves, no longer find it
        code = run.finish(timeout=180)
    finally:
        if run.process.poll() is None:
            run.kill()
    lines = [line for line in "".join(run.stderr).splitlines() if line.strip() and "%" not in line]
    assert code == 2 and "worker cannot open" in lines[-1] and str(raw) in lines[-1], lines[-5:]
    assert not [name for name in os.listdir(tmp_path) if name.startswith("out")]


def test_dask_options_that_do_not_fit_are_refused_in_one_line():
    for args, message in ((["--dask", "local:0"], "local:N"), (["--dask", "local:2", "--workers", "2"], "replace"),
                          (["--shared-filesystem", "--output_format", "npy"], "need --dask"), (["--dask", "udp://x"], "tcp://")):
        result = run_cli("--headless", "--project", "p.ilp", *args)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1, args


def test_several_export_sources_in_one_run_compute_each_block_once(data_dir, tmp_path):
    project = os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp")
    common = ("--project", project, "--block_shape", "32,32,32")
    sources = ("Probabilities", "Simple Segmentation", "Uncertainty")
    pattern = str(tmp_path / "both_{result_type}")
    result = run_cli("--headless", "--no-progress", "--output_format", "npy", "--output_filename_format", pattern,
                     *common, "--dask", "local:2", *(a for s in sources for a in ("--export_source", s)))
    assert result.returncode == 0, result.stderr
    assert "(8 blocks," in result.stderr and "8 computed" in result.stderr  # 2 x 2 x 2 blocks, features once each
    for source in sources:
        single, single_out = _export(tmp_path, source.replace(" ", "_"), *common, "--workers", "2",
                                     "--export_source", source)
        assert single.returncode == 0, single.stderr
        combined = np.load(pattern.format(result_type=source.replace(" ", "_")) + ".npy")
        alone = np.load(single_out)
        assert combined.dtype == alone.dtype and np.array_equal(combined, alone), source
    refused = run_cli("--headless", "--project", project, "--export_source", "Probabilities", "--export_source",
                      "Uncertainty", "--output_filename_format", str(tmp_path / "same"))
    assert refused.returncode == 2 and "{result_type}" in refused.stderr


def test_shared_filesystem_export_equals_the_one_that_ships_raw_blocks(project, tmp_path):
    shipped, shipped_out = _export(tmp_path, "shipped", "--project", project, "--block_shape", "32,64,64",
                                   "--dask", "local:2")
    by_path, by_path_out = _export(tmp_path, "by_path", "--project", project, "--block_shape", "32,64,64",
                                   "--dask", "local:2", "--shared-filesystem")
    assert shipped.returncode == 0 and by_path.returncode == 0, shipped.stderr + by_path.stderr
    assert np.array_equal(np.load(shipped_out), np.load(by_path_out))


def test_each_dask_worker_holds_the_pipeline_once_as_a_plugin_named_by_its_fingerprint(project_and_image):
    from backend.distributed.dask_clusters import DaskSettings, start_dask
    from backend.distributed.dask_executor import plugin_name
    from tests.integration.test_executor import _pipeline, _task

    path, image = project_and_image
    pipeline = _pipeline(path)
    with start_dask(DaskSettings(address="local:2")) as executor:
        assert executor.wait_for_workers(2, timeout=60)
        assert executor.status().processes == 2  # at once: an export sizes its queue on it
        fingerprint = executor.add_pipeline(pipeline)
        assert executor.add_pipeline(pipeline) == fingerprint  # sent once
        plugins = executor.client.run(lambda dask_worker: sorted(dask_worker.plugins))
        assert len(plugins) == 2 and all(plugin_name(fingerprint) in names for names in plugins.values())
        futures = [executor.submit(_task(pipeline, image)) for _ in range(4)]
        assert all(np.array_equal(f.result(timeout=120), pipeline.run(_task(pipeline, image))) for f in futures)
        assert max(f.compute_s for f in futures) < 2.0  # kernels were warm before the first task


def test_kill_9_of_the_app_with_a_local_dask_cluster_leaves_nothing_running(project, tmp_path):
    run = Run(*_args(project, str(tmp_path / "out"), "--dask", "local:2"))
    try:
        run.wait_progress(1)
        assert len(_dask_workers(run)) == 2
        run.kill_app()
    finally:
        if run.process.poll() is None:
            run.kill()
    assert_all_gone(run.seen - {run.process.pid}, within=10)


def test_serve_on_a_local_dask_cluster_answers_like_the_export(data_dir, tmp_path):
    import zarr

    from tests.integration.webserver import ServeProcess

    project = os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp")
    exported, out = _export(tmp_path, "export", "--project", project, "--workers", "2")
    assert exported.returncode == 0, exported.stderr
    with ServeProcess(project, "--dask", "local:2") as server:
        served = zarr.open_array(server.url + "/zarr/0/probabilities/0", mode="r", zarr_format=2)[:]
    assert np.array_equal(np.moveaxis(np.load(out), -1, 0), served) and not server.left_running
