"""The headless export against damaged and declared-huge raw data, and stopped by the signals a user sends:
one line and a non-zero exit, or a clean stop; never a traceback, a leftover file or a process left running."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile

import h5py
import numpy as np
import psutil
import pytest

from backend.io.writers import axistags_json
from tests.helpers import wait_for
from tests.integration.test_executor import small_project
from tests.integration.test_faults import Run, assert_all_gone

HUGE_SHAPE = (2**31, 64, 64)  # 33 M blocks of 64^3; a 1.4 KB file, every chunk unwritten (its fill value)
RSS_LIMIT_MB = 500  # the app needs about 160 MB; listing every block took 1.5 GB in 5 s


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("export-faults")), shape=(24, 96, 96))


@pytest.fixture(scope="module")
def huge(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("huge") / "huge.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("data", shape=HUGE_SHAPE, chunks=(64, 64, 64), dtype=np.uint8, fillvalue=0)
    assert os.path.getsize(path) < 4096
    return path + "/data"


def damaged_copy(image: np.ndarray, path: str) -> None:
    """``image`` as gzip-compressed chunks with the middle of the fourth chunk overwritten on disk."""
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("data", data=image, chunks=(8, 64, 64), compression="gzip")
        ds.attrs["axistags"] = axistags_json("zyx")
        chunk = ds.id.get_chunk_info(3)
    with open(path, "r+b") as f:
        f.seek(chunk.byte_offset + chunk.size // 2)
        f.write(b"\xff" * 64)


@pytest.fixture
def tmp():
    """A temporary folder of its own for the app (short: the cache's Unix socket is made in it)."""
    folder = tempfile.mkdtemp(prefix="xf-")
    yield folder
    shutil.rmtree(folder)


def start(project: str, tmp_path, tmp: str, *args: str) -> tuple[Run, str]:
    """The export into a folder of its own, with ``tmp`` as its temporary folder: (run, output folder)."""
    out = tmp_path / "out"
    out.mkdir()
    run = Run("--headless", "--project", project, "--output_filename_format", str(out / "result"), "--workers", "1",
              *args, env={"TMPDIR": tmp})
    return run, str(out)


def assert_clean_end(run: Run, out: str, tmp: str) -> None:
    assert os.listdir(out) == []  # neither the output nor its hidden partial file
    assert os.listdir(tmp) == []  # the cache's, the workers' and the run's temporary folders
    assert_all_gone(run.seen - {run.process.pid}, within=5)


@pytest.mark.timeout(180)
def test_a_damaged_chunk_of_the_raw_data_fails_the_export_in_one_line(project, tmp_path, tmp):
    path, image = project
    damaged = str(tmp_path / "damaged.h5")
    damaged_copy(image, damaged)
    run, out = start(path, tmp_path, tmp, "--no-progress", "--raw_data", damaged + "/data", "--output_format", "npy",
                          "--block_shape", "12,48,48")
    try:
        run.find("redis-server")
        run.tree()
        code = run.finish(timeout=120)
    finally:
        if run.process.poll() is None:
            run.kill()
    stderr = "".join(run.stderr)
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr[-3000:]
    assert f"{damaged}/data: cannot read the region z " in stderr and "partial output was removed" in stderr
    assert_clean_end(run, out, tmp)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup-terminal-closed"])
def test_an_export_of_a_declared_huge_image_runs_in_flat_memory_until_stopped(project, huge, tmp_path, tmp, sig):
    run, out = start(project[0], tmp_path, tmp, "--raw_data", huge, "--output_format", "zarr")
    app = psutil.Process(run.process.pid)
    peak = [0]

    def progress(blocks: int) -> bool:
        peak[0] = max(peak[0], app.memory_info().rss >> 20)
        assert peak[0] < RSS_LIMIT_MB, f"the app took {peak[0]} MB at {run.done} blocks"
        assert run.process.poll() is None, "".join(run.stderr)[-3000:]
        return run.done >= blocks

    try:
        wait_for(lambda: progress(10), 120, interval=0.05, message=lambda: f"at {run.done} blocks")
        after_10 = app.memory_info().rss >> 20
        wait_for(lambda: progress(40), 120, interval=0.05, message=lambda: f"at {run.done} blocks")
        assert (app.memory_info().rss >> 20) - after_10 < 64, "the app grows block by block"
        run.find("redis-server")
        run.tree()
        code, took = run.interrupt(sig)
    finally:
        if run.process.poll() is None:
            run.kill()
    stderr = "".join(run.stderr)
    assert code == 130 and took < 5, (took, stderr[-3000:])
    assert "Traceback" not in stderr and "interrupted; unfinished output was removed" in stderr, stderr[-3000:]
    assert_clean_end(run, out, tmp)


@pytest.mark.timeout(120)
def test_an_export_that_cannot_fit_on_the_disk_is_refused_in_one_line(project, huge, tmp_path, tmp):
    run, out = start(project[0], tmp_path, tmp, "--no-progress", "--raw_data", huge, "--output_format", "hdf5")
    try:
        code = run.finish(timeout=60)
    finally:
        if run.process.poll() is None:
            run.kill()
    stderr = "".join(run.stderr)
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr[-3000:]
    assert "result.h5: the output needs 70,368.7 GB but only" in stderr
    assert_clean_end(run, out, tmp)


@pytest.mark.timeout(240)
def test_an_interrupted_shared_filesystem_export_says_its_written_blocks_stay(project, huge, tmp_path, tmp):
    run, out = start(project[0], tmp_path, tmp, "--raw_data", huge, "--output_format", "zarr", "--shared-filesystem")
    try:
        wait_for(lambda: run.done >= 10 or run.process.poll() is not None, 120, interval=0.05,
                 message=lambda: f"at {run.done} blocks")
        run.tree()
        code, took = run.interrupt(signal.SIGINT)
    finally:
        if run.process.poll() is None:
            run.kill()
    stderr = "".join(run.stderr)
    assert code == 130 and took < 5, (took, stderr[-3000:])
    assert "Traceback" not in stderr and "unfinished output was removed" not in stderr, stderr[-3000:]
    assert "interrupted; the blocks written so far stay in the zarr output" in stderr, stderr[-3000:]
    assert os.listdir(out) == ["result.zarr"]  # what the workers wrote, for the same command to finish
    assert os.listdir(tmp) == []
    assert_all_gone(run.seen - {run.process.pid}, within=5)
