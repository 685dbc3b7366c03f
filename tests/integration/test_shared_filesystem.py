"""--shared-filesystem: the workers read their raw blocks and write their zarr chunks themselves.

One redis-server, one ZeroMQ executor with a real worker (two compute processes) and one ordinary zarr export
of every pixel source serve the whole module. Each shared export must equal the ordinary one value for value,
with no result reaching the gateway or the cache, also when a compute process is killed mid-run or a killed
writer left a damaged chunk and a temporary file behind.
"""

from __future__ import annotations

import os
import signal

import h5py
import numpy as np
import psutil
import pytest
import zarr

from backend.cache.block_cache import BlockCache
from backend.cache.redis_server import EmbeddedRedis, RedisSettings
from backend.compute.geometry import Roi
from backend.compute.pipeline import RESULT_KINDS, combined_kind
from backend.config import CacheConfig
from backend.errors import UserError
from backend.io.chunk_store import ATTRIBUTE, PARTIAL
from backend.io.sources import open_source
from backend.service.export import ExportOptions, run_export
from backend.service.gateway import Gateway, GatewayConfig
from backend.service.shared_export import open_output
from tests.conftest import run_cli
from tests.helpers import wait_for
from tests.integration.test_executor import _pipeline, small_project
from tests.integration.test_faults import FEATURES, assert_all_gone
from tests.integration.workers import ZmqWithWorkers, compute_processes, kill_worker, start_worker

pytestmark = pytest.mark.timeout(300)
BLOCK = (1, 16, 32, 32)
SHAPE = (32, 96, 128)  # 2 x 3 x 4 = 24 blocks
SMALL_BLOCK = (1, 8, 16, 16)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(gateway, redis client, worker process, folder) on a 9-feature synthetic project."""
    folder = tmp_path_factory.mktemp("shared")
    path, _ = small_project(str(folder), shape=SHAPE, selection=FEATURES)
    pipeline = _pipeline(path)
    server = EmbeddedRedis(RedisSettings(maxmemory_mb=256)).start()
    workers = ZmqWithWorkers(pipeline, workers=1, processes=2)
    gateway = Gateway(open_source(os.path.join(folder, "raw.h5/data")), pipeline, workers.executor,
                      BlockCache(server.client()), GatewayConfig(BLOCK))
    try:
        yield gateway, server.client(), workers.procs[0], folder
    finally:
        gateway.close()
        workers.close()
        server.stop()


@pytest.fixture(scope="module")
def ordinary(cluster):
    """The ordinary zarr export of every pixel source (one run, results through the gateway), and the bytes the
    cache server received for it."""
    gateway, client, _, folder = cluster
    before = client.info("stats")["total_net_input_bytes"]
    options = ExportOptions(kind=combined_kind(RESULT_KINDS), fmt="zarr", progress=False, block_shape=BLOCK,
                            filename_pattern=str(folder / "ordinary_{result_type}"))
    result = run_export(gateway, "raw", options, max_in_flight=8)
    wait_for(lambda: not client.keys("*:lease"), 30, message="the ordinary export's results did not reach the cache")
    arrays = {kind: zarr.open_group(path, mode="r") for kind, path in zip(RESULT_KINDS, result.paths)}
    return arrays, client.info("stats")["total_net_input_bytes"] - before


def _shared(gateway, folder, name: str, kind: str = "Probabilities", on_progress=None, **more):
    options = ExportOptions(kind=kind, fmt="zarr", progress=False, block_shape=BLOCK, shared_filesystem=True,
                            filename_pattern=str(folder / name), **more)
    return run_export(gateway, "raw", options, max_in_flight=64, on_progress=on_progress)


def _assert_equal(path: str, ordinary_group) -> None:
    shared = zarr.open_group(path, mode="r")
    assert shared["0"].dtype == ordinary_group["0"].dtype and shared["0"].shape == ordinary_group["0"].shape
    assert np.array_equal(shared["0"][...], ordinary_group["0"][...])
    assert shared.attrs["multiscales"][0]["axes"] == ordinary_group.attrs["multiscales"][0]["axes"]
    assert not [name for name in os.listdir(os.path.join(path, "0")) if name.endswith(PARTIAL)]


@pytest.mark.parametrize("kind", RESULT_KINDS)
def test_shared_export_equals_the_ordinary_export_with_no_result_through_gateway_or_cache(cluster, ordinary, kind):
    gateway, client, _, folder = cluster
    groups, ordinary_bytes = ordinary
    before = client.info("stats")["total_net_input_bytes"]
    result = _shared(gateway, folder, f"shared_{kind.replace(' ', '_')}", kind)
    received = client.info("stats")["total_net_input_bytes"] - before
    _assert_equal(result.path, groups[kind])
    assert result.shared.computed == result.blocks == 24 and result.shared.written_before == 0
    assert result.shared.result_bytes == 0  # only "written" answers reached the gateway
    size = groups[kind]["0"].nbytes
    block_bytes = size // result.blocks  # 16 KB (uint8) to 590 KB (Features) of values per block
    assert received < min(2048, block_bytes) * result.blocks, (received, size)  # claims and markers, no values
    assert ordinary_bytes > size / 4  # where the ordinary export did send its results


def test_a_compute_process_killed_mid_export_changes_nothing(cluster, ordinary):
    gateway, _, worker, folder = cluster
    killed = []

    def kill_one(done: int, total: int) -> None:
        if done >= 3 and not killed:
            victim = compute_processes(psutil.Process(worker.pid))[0]
            victim.send_signal(signal.SIGKILL)
            killed.append((victim.pid, done, total))

    result = _shared(gateway, folder, "killed", on_progress=kill_one)
    assert killed and killed[0][1] < killed[0][2]  # killed while blocks were still to come
    _assert_equal(result.path, ordinary[0]["Probabilities"])
    assert result.shared.result_bytes == 0


def test_a_damaged_chunk_and_the_temporary_file_of_a_killed_writer_are_replaced(cluster, ordinary):
    gateway, _, _, folder = cluster
    path = str(folder / "damaged.zarr")
    output = open_output(gateway, path, "Probabilities", None)  # as a run killed before it wrote these
    with open(os.path.join(output.array_path, "0.0.0.0.0"), "wb") as f:
        f.write(b"\x02\x01half a chunk")
    partial = os.path.join(output.array_path, f".0.1.1.2.3~0123456789ab{PARTIAL}")
    with open(partial, "wb") as f:
        f.write(b"torn")
    result = _shared(gateway, folder, "damaged")
    assert result.shared.computed == 24 and result.shared.partials_removed == 1
    _assert_equal(result.path, ordinary[0]["Probabilities"])


def test_what_the_shared_mode_refuses_is_said_in_one_line(cluster, ordinary):
    gateway, _, _, folder = cluster
    with pytest.raises(UserError, match="needs --output_format zarr"):
        run_export(gateway, "raw", ExportOptions(fmt="npy", shared_filesystem=True, block_shape=BLOCK,
                                                 filename_pattern=str(folder / "npy"), progress=False))
    with pytest.raises(UserError, match="multiple of the block shape"):
        _shared(gateway, folder, "unaligned", region=Roi((0, 8, 0, 0), (1, 32, 96, 128)))
    open_output(gateway, str(folder / "uncertainty.zarr"), "Uncertainty", None)
    with pytest.raises(UserError, match="other settings.*source"):
        _shared(gateway, folder, "uncertainty", "Probabilities")
    with pytest.raises(UserError, match="not a --shared-filesystem export"):
        _shared(gateway, folder, "ordinary_Probabilities")


def _real_export(data_dir: str, out: str, *more: str):
    project = os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp")
    return run_cli("--headless", "--no-progress", "--project", project,
                   "--output_format", "zarr", "--block_shape", "32,32,32", "--output_filename_format", out, *more)


@pytest.fixture(scope="module")
def real_ordinary(data_dir, tmp_path_factory):
    """The ordinary zarr export of a real ilastik project (8 blocks, 2 channels)."""
    out = str(tmp_path_factory.mktemp("real") / "ordinary")
    result = _real_export(data_dir, out, "--workers", "1")
    assert result.returncode == 0, result.stderr
    return zarr.open_group(out + ".zarr", mode="r")["0"][...]


@pytest.mark.parametrize("engine", [("--workers", "1"), ("--dask", "local:2")], ids=["zeromq", "dask"])
def test_headless_shared_export_of_a_real_project_equals_the_ordinary_one(data_dir, real_ordinary, tmp_path, engine):
    shared = _real_export(data_dir, str(tmp_path / "shared"), *engine, "--shared-filesystem")
    assert shared.returncode == 0, shared.stderr
    assert "8 written by the workers, 0 written before, 0 bytes of results through this gateway" in shared.stderr
    array = zarr.open_group(str(tmp_path / "shared.zarr"), mode="r")["0"][...]
    assert real_ordinary.shape == (2, 64, 64, 64) and np.array_equal(array, real_ordinary)


def test_an_ilastik_worker_process_killed_mid_export_leaves_the_output_whole_and_nothing_running(cluster, ordinary):
    """The acceptance's fault: a second real ``ilastik-worker`` joins, and is SIGKILLed (the worker process
    itself, not a compute process) while it computes blocks of the export; the first worker finishes them."""
    gateway, _, _, folder = cluster
    executor = gateway.executor
    second = start_worker("--connect", executor.address, processes=1)
    try:
        assert executor.wait_for_workers(3, timeout=60)
        compute = wait_for(lambda: compute_processes(psutil.Process(second.pid)), 30, interval=0.05,
                           message="the second worker started no compute process")
        tree = {second.pid} | {p.pid for p in compute}
        redispatched = executor.status().redispatched
        killed = []

        def kill_the_second_worker(done: int, total: int) -> None:
            if done >= 3 and not killed:
                wait_for(lambda: [w for w in executor.status().workers if w.processes == 1 and w.in_flight], 30,
                         interval=0.02, message=lambda: f"the second worker has no task: {executor.status().workers}")
                second.send_signal(signal.SIGKILL)
                killed.append((done, total))

        result = _shared(gateway, folder, "worker_killed", on_progress=kill_the_second_worker)
    finally:
        kill_worker(second)
    assert killed and killed[0][0] < killed[0][1]  # killed while blocks were still to come
    assert executor.status().redispatched > redispatched  # its blocks were sent again
    _assert_equal(result.path, ordinary[0]["Probabilities"])  # also: no .partial file left
    assert result.shared.computed == 24 and result.shared.result_bytes == 0
    assert_all_gone(tree, within=5)  # its compute process followed it


def test_written_markers_lapse_and_the_chunks_on_disk_keep_a_rerun_from_recomputing(cluster):
    """96 small blocks with markers kept 1 s: none is left in the cache a few seconds after the export; the same
    export again computes only the block whose chunk was damaged meanwhile, finding the others on disk."""
    gateway, client, _, folder = cluster
    cache = BlockCache(client, CacheConfig(written_ttl_s=1))
    small = Gateway(gateway.source, gateway.snapshot.pipeline, gateway.executor, cache, GatewayConfig(SMALL_BLOCK))
    options = ExportOptions(kind="Probabilities", fmt="zarr", progress=False, block_shape=SMALL_BLOCK,
                            shared_filesystem=True, filename_pattern=str(folder / "lapsing"),
                            region=Roi((0, 0, 0, 0), (1, 16, 96, 128)))
    try:
        first = run_export(small, "raw", options, max_in_flight=64)
        pattern = f"*:written:{zarr.open_group(first.path, mode='r').attrs[ATTRIBUTE]['run']}"
        markers = client.keys(pattern)
        assert first.shared.computed == first.blocks == 96 and 0 < len(markers) <= 96
        assert all(0 < client.pttl(key) <= 1000 for key in markers)
        wait_for(lambda: not client.keys(pattern), 10, message="the written markers did not lapse")
        assert not client.keys("*:lease")
        values = zarr.open_group(first.path, mode="r")["0"][...]
        with open(os.path.join(first.path, "0", "1.1.2.3"), "wb") as f:
            f.write(b"\x02\x01half a chunk")
        again = run_export(small, "raw", options, max_in_flight=64)
    finally:
        small.close()
    assert again.shared.computed == 1 and again.shared.written_before == 95
    assert np.array_equal(zarr.open_group(again.path, mode="r")["0"][...], values)


@pytest.fixture(scope="module")
def ordinary_h5(cluster):
    """The ordinary hdf5 export of the probabilities (results through the gateway)."""
    gateway, _, _, folder = cluster
    options = ExportOptions(kind="Probabilities", fmt="hdf5", progress=False, block_shape=BLOCK,
                            filename_pattern=str(folder / "ordinary_h5"))
    with h5py.File(run_export(gateway, "raw", options, max_in_flight=8).path, "r") as f:
        return f["exported_data"][...], dict(f["exported_data"].attrs)


def _shared_h5(gateway, folder, name: str, on_progress=None):
    options = ExportOptions(kind="Probabilities", fmt="hdf5", progress=False, block_shape=BLOCK,
                            shared_filesystem=True, filename_pattern=str(folder / name))
    return run_export(gateway, "raw", options, max_in_flight=64, on_progress=on_progress)


def test_hdf5_through_one_writer_process_equals_the_ordinary_export_with_a_compute_process_killed(
        cluster, ordinary_h5):
    gateway, _, worker, folder = cluster
    killed = []

    def kill_one(done: int, total: int) -> None:
        if done >= 3 and not killed:
            victim = compute_processes(psutil.Process(worker.pid))[0]
            victim.send_signal(signal.SIGKILL)
            killed.append((done, total))

    result = _shared_h5(gateway, folder, "shared_h5", on_progress=kill_one)
    assert killed and killed[0][0] < killed[0][1]
    assert result.shared.computed == 24 and result.shared.result_bytes == 0
    with h5py.File(result.path, "r") as f:
        assert np.array_equal(f["exported_data"][...], ordinary_h5[0])
        assert f["exported_data"].attrs["axistags"] == ordinary_h5[1]["axistags"]
    assert sorted(os.listdir(folder)) == sorted(set(os.listdir(folder)))  # no hidden partial file of it
    assert not [name for name in os.listdir(folder) if name.startswith(".shared_h5")]


def test_hdf5_of_a_region_cutting_blocks_equals_the_ordinary_export_and_a_bad_folder_is_one_line(cluster):
    gateway, _, _, folder = cluster
    region = Roi((0, 0, 0, 0), (1, 20, 50, 70))  # ends inside blocks on every axis
    results = {}
    for name, shared in (("cut_ordinary", False), ("cut_shared", True)):
        options = ExportOptions(kind="Probabilities", fmt="hdf5", progress=False, block_shape=BLOCK, region=region,
                                shared_filesystem=shared, filename_pattern=str(folder / name))
        with h5py.File(run_export(gateway, "raw", options, max_in_flight=64).path, "r") as f:
            results[name] = f["exported_data"][...]
    assert results["cut_shared"].shape == (20, 50, 70, 2)
    assert np.array_equal(results["cut_shared"], results["cut_ordinary"])
    with pytest.raises(UserError, match="^[^\n]*missing[^\n]*does not exist$"):
        _shared_h5(gateway, folder / "missing", "out")


def test_a_killed_hdf5_writer_fails_the_export_in_one_line_and_leaves_no_file(cluster, ordinary_h5):
    gateway, _, _, folder = cluster
    writers = []

    def kill_the_writer(done: int, total: int) -> None:
        if done >= 2 and not writers:
            writers.extend(p for p in psutil.Process().children() if "backend.io.h5_writer" in " ".join(p.cmdline()))
            for writer in writers:
                writer.send_signal(signal.SIGKILL)

    with pytest.raises(UserError, match="the HDF5 writer process ended .* nothing was written there") as caught:
        _shared_h5(gateway, folder, "writer_killed", on_progress=kill_the_writer)
    assert len(writers) == 1 and "\n" not in str(caught.value)
    assert not [name for name in os.listdir(folder) if "writer_killed" in name]
    assert_all_gone({writers[0].pid}, within=5)
    after = _shared(gateway, folder, "after_the_writer")  # no compute process still waits for the dead writer
    assert after.shared.computed == 24 and after.seconds < 60  # (it would for h5_writer_timeout_s, 120 s)


def test_headless_hdf5_through_the_writer_process_equals_the_ordinary_hdf5_export(data_dir, tmp_path):
    project = os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp")
    arrays = {}
    for name, more in (("ordinary", ()), ("shared", ("--shared-filesystem",))):
        done = run_cli("--headless", "--no-progress", "--project", project, "--output_format", "hdf5",
                       "--block_shape", "32,32,32", "--output_filename_format", str(tmp_path / name), "--workers", "1",
                       *more)
        assert done.returncode == 0, done.stderr
        with h5py.File(tmp_path / f"{name}.h5", "r") as f:
            arrays[name] = f["exported_data"][...]
    assert "8 written by the workers, 0 written before, 0 bytes of results through this gateway" in done.stderr
    assert arrays["ordinary"].shape == (64, 64, 64, 2) and np.array_equal(arrays["shared"], arrays["ordinary"])
    assert sorted(os.listdir(tmp_path)) == ["ordinary.h5", "shared.h5"]
