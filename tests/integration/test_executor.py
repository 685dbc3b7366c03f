"""Pipelines travel as messages unchanged, and the export's memory stays bounded (the Executor contract
itself: tests/contract/test_executor.py)."""

import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest

from backend.compute.pipeline import BlockTask, Pipeline
from backend.distributed.local_executor import LocalExecutor
from backend.distributed.pipeline_folder import PREFIX
from backend.io.project import open_project
from backend.io.project_pipeline import build_pipeline
from backend.io.synthetic import SyntheticProject, write_synthetic_project
from backend.owned_folder import LOCK
from tests.conftest import REPO
from tests.helpers import wait_for
from tests.integration.workers import kill_worker, start_worker


def small_project(folder, shape=(24, 64, 64), selection=((True, True, False),) + ((False,) * 3,) * 5,
                  scales=(0.7, 1.6, 3.5)):
    """A trained 10-tree project on a synthetic volume in ``folder``: (``p.ilp`` path, image)."""
    spec = SyntheticProject(tuple(shape), selection, scales, seed=7, density=5e-4, label_size=16, trees=10,
                            chunks=(8, 64, 64), label_names=("bg", "fg"), label_colors=((0, 0, 0), (255, 255, 255)))
    return write_synthetic_project(str(folder), spec, "p.ilp", "raw.h5")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("proj")))


def _pipeline(path):
    return build_pipeline(open_project(path), 1, True)


def _task(pipeline, image, kind="Probabilities"):
    target = ((4, 12), (8, 40), (16, 48))
    halo = pipeline.halo
    lo = [max(0, a - h) for (a, _), h in zip(target, halo)]
    hi = [min(n, b + h) for (_, b), h, n in zip(target, halo, image.shape)]
    raw = image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2], None]
    return BlockTask("k", kind, raw, tuple(lo), image.shape, target, pipeline.fingerprint())


def test_pipeline_message_round_trip(project):
    path, image = project
    pipeline = _pipeline(path)
    header, arrays = pipeline.to_message()
    import json

    copy = Pipeline.from_message(json.loads(json.dumps(header)), [a.copy() for a in arrays])
    assert copy.fingerprint() == pipeline.fingerprint()
    for kind in ("Probabilities", "Simple Segmentation", "Uncertainty", "Features"):
        task = _task(pipeline, image, kind)
        assert np.array_equal(copy.run(task), pipeline.run(task))


def _peak_rss_of_export(project_path, out):
    cmd = [sys.executable, "-m", "ilastik_desktop", "--headless", "--no-progress", "--project", project_path,
           "--output_format", "npy", "--output_filename_format", out, "--workers", "2", "--block_shape", "32,64,64",
           "--cache-mb", "32"]
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample_until_exit() -> bool:
        try:
            procs = [root, *root.children(recursive=True)]
            peak[0] = max(peak[0], sum(p.memory_info().rss - p.memory_info().shared for p in procs))
        except psutil.Error:
            pass
        return proc.poll() is not None

    root = psutil.Process(proc.pid)
    watcher = threading.Thread(target=wait_for, args=(sample_until_exit, 600), kwargs={"interval": 0.05})
    watcher.start()
    _, err = proc.communicate(timeout=600)
    watcher.join()
    assert proc.returncode == 0, err
    return peak[0]


@pytest.mark.timeout(900)
def test_export_memory_does_not_grow_with_volume(tmp_path):
    small_dir, large_dir = tmp_path / "small", tmp_path / "large"
    small_dir.mkdir()
    large_dir.mkdir()
    small, _ = small_project(str(small_dir), shape=(32, 128, 128))
    large, _ = small_project(str(large_dir), shape=(256, 256, 256))  # 32x the voxels, 128 MB of output
    peak_small = _peak_rss_of_export(small, str(tmp_path / "s"))
    peak_large = _peak_rss_of_export(large, str(tmp_path / "l"))
    assert np.load(tmp_path / "l.npy", mmap_mode="r").shape == (256, 256, 256, 2)
    print(f"peak private RSS: small {peak_small / 2**20:.0f} MB, large {peak_large / 2**20:.0f} MB")
    # the block cache may fill up to its --cache-mb limit; everything else must stay flat
    assert peak_large < peak_small * 1.25 + (40 + 32) * 2**20, (peak_small / 2**20, peak_large / 2**20)


def _folder_of(proc) -> Path:
    """The pipeline folder a worker process holds the lock of."""
    locks = [f.path for f in psutil.Process(proc.pid).open_files() if f.path.endswith("/" + LOCK)]
    return Path(locks[0]).parent if locks else None


@pytest.mark.timeout(180)
def test_pipeline_folders_of_killed_workers_are_removed_at_start(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the workers' temporary folder, and ours
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    endpoint = f"ipc://{tmp_path}/nobody.sock"  # no gateway: the workers just wait
    killed, alive = start_worker("--connect", endpoint), start_worker("--connect", endpoint)
    try:
        folders = wait_for(lambda: all(map(_folder_of, (killed, alive))) and (_folder_of(killed), _folder_of(alive)),
                           60, interval=0.1, ignore=(psutil.Error,))
        kill_worker(killed)
        assert folders[0].is_dir()  # SIGKILL: nobody removed it
        being_created = tmp_path / (PREFIX + "new")  # no lock file yet: its owner is still setting it up
        being_created.mkdir()
        executor = LocalExecutor(workers=1)
        try:
            assert not folders[0].exists()
            assert folders[1].is_dir() and being_created.is_dir() and Path(executor._folder.path).is_dir()
        finally:
            executor.close()
        assert not Path(executor._folder.path).exists()
    finally:
        kill_worker(alive)
        kill_worker(killed)
