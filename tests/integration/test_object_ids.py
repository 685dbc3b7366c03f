"""Object IDs through the commands on a real ilastik 1.2 time series: ilastik's IDs (gaps where the size filter
removed an object) by default, ``--relabel`` for 1..n, exported and served alike; a graph-cut project serves its
probabilities and refuses objects in one line."""

from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest
import zarr

from tests.conftest import run_cli
from tests.integration.webserver import ServeProcess

pytestmark = pytest.mark.timeout(300)

# on frame 6 the size filter drops the single pixels between the four cells (IDs 2, 5, 6, ...)
THRESHOLD = "channel=1,low=0.2,min_size=10,sigmas=0:0:0"


@pytest.fixture
def mitocheck(data_dir, tmp_path):
    """A copy of the shared ilastik 1.2 time-series project with its raw data (9 frames of 99 x 105)."""
    folder = os.path.join(data_dir, "ilastik-timeseries")
    shutil.copyfile(os.path.join(folder, "mitocheckPixelClassification.ilp"), tmp_path / "mito.ilp")
    shutil.copytree(os.path.join(folder, "mitocheck_2d+t"), tmp_path / "mitocheck_2d+t")
    return str(tmp_path / "mito.ilp")


def _objects(project: str, tmp_path, name: str, *args: str) -> np.ndarray:
    result = run_cli("--headless", "--no-progress", "--project", project, "--export_source", "Objects",
                     "--output_format", "npy", "--output_filename_format", str(tmp_path / name), "--workers", "1",
                     "--threshold", THRESHOLD, *args)
    assert result.returncode == 0, result.stderr
    return np.load(tmp_path / f"{name}.npy")[..., 0]  # t x y z


def test_ilastiks_ids_by_default_and_consecutive_ones_with_relabel_exported_and_served(mitocheck, tmp_path):
    plain = _objects(mitocheck, tmp_path, "plain")
    relabelled = _objects(mitocheck, tmp_path, "relabelled", "--relabel")
    frame = plain[6]
    assert sorted(np.unique(frame[frame > 0])) == [1, 3, 4, 9]  # ilastik's IDs, gaps kept
    for t in range(plain.shape[0]):
        ids = np.unique(plain[t][plain[t] > 0])
        expected = np.zeros_like(plain[t])
        for new, old in enumerate(ids, start=1):
            expected[plain[t] == old] = new
        assert np.array_equal(relabelled[t], expected), f"frame {t}"
    with ServeProcess(mitocheck, "--workers", "1", "--threshold", THRESHOLD, "--relabel") as server:
        served = zarr.open_array(server.url + "/zarr/0/objects/0", mode="r", zarr_format=2)[:]  # t c z y x
    assert np.array_equal(served[:, 0, 0], relabelled[..., 0].transpose(0, 2, 1))


def test_a_graph_cut_project_is_served_without_objects_saying_why(mitocheck):
    with h5py.File(mitocheck, "r+") as f:
        group = f.create_group("ThresholdTwoLevels")
        group["CurOperator"], group["SingleThreshold"], group["Channel"] = 2, 0.5, 1
    line = (f"{mitocheck}: ThresholdTwoLevels/CurOperator is 2 (graph-cut thresholding), which ilastik-desktop "
            "does not support; choose Simple or Hysteresis")
    with ServeProcess(mitocheck, "--workers", "1") as server:
        assert any(printed.startswith(line) for printed in server.lines), server.lines
        assert server.get("/zarr/0/probabilities/0/0.0.0.0.0")[0] == 200
        status, body, _ = server.get("/zarr/0/objects/0/0.0.0.0.0")
        assert status == 400 and json.loads(body)["error"].startswith("ThresholdTwoLevels/CurOperator is 2")
        assert server.get("/health")[0] == 200
