"""The headless export against damaged raw data: one line and a non-zero exit; never a traceback, a leftover
file or a process left running."""

from __future__ import annotations

import os
import shutil
import tempfile

import h5py
import numpy as np
import pytest

from backend.io.writers import axistags_json
from tests.integration.test_executor import small_project
from tests.integration.test_faults import Run, assert_all_gone


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("export-faults")), shape=(24, 96, 96))


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
