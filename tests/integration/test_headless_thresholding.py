"""Headless thresholding as a new user meets it: a project without saved thresholding is thresholded on its first
class that is not background (as the window does), frames without any object are said in one warning line, an
unsupported method is refused alike for Objects and Object Features, and the mistakes of ``--prediction_maps``
runs (a map given twice, an output named after the map, a label image taken for a map) are said as they are."""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest

from backend.compute.threshold import ThresholdSettings, threshold_frame
from tests.conftest import run_cli
from tests.integration.test_object_ids import mitocheck  # noqa: F401 (fixture)
from tests.integration.test_prediction_maps import OC_PROJECT, UNTRAINED_PC_PROJECT, objects, pmaps, write_h5

pytestmark = pytest.mark.timeout(300)
FIRST_FRAMES = "[(0, None, None, None, None), (3, None, None, None, None)]"  # of mitocheck's txyzc raw data


@pytest.fixture
def cells_project(data_dir, tmp_path) -> str:
    """A copy of a pixel classification project without thresholding whose classes are Background and Cells."""
    path = str(tmp_path / "cells.ilp")
    shutil.copyfile(os.path.join(data_dir, UNTRAINED_PC_PROJECT), path)
    with h5py.File(path, "r+") as f:
        del f["PixelClassification/LabelNames"]
        f["PixelClassification/LabelNames"] = np.array([b"Background", b"Cells"], object)
        assert "ThresholdTwoLevels" not in f
    return path


def cell_maps(frames: int, empty_frames: tuple[int, ...] = ()) -> np.ndarray:
    """(t, y, x, 2) maps: Cells high on a few boxes (none in ``empty_frames``), Background its complement."""
    cells = np.zeros((frames, 30, 40), np.float32)
    for t in range(frames):
        if t not in empty_frames:
            cells[t, 3:9, 4:12] = cells[t, 15:25, 20 + t:30 + t] = 0.9
    return np.stack([1 - cells, cells], axis=-1)


def test_no_saved_thresholding_thresholds_the_first_class_that_is_not_background(cells_project, tmp_path):
    maps = cell_maps(3, empty_frames=(1,))
    write_h5(tmp_path / "maps.h5", maps, "tyxc")
    result = pmaps(tmp_path, cells_project, "maps.h5")
    assert result.returncode == 0, result.stderr
    labels = objects(str(tmp_path / "maps_Objects.h5"))[..., 0]
    settings = ThresholdSettings(channel=1, core_channel=1)
    for t in range(3):
        assert np.array_equal(labels[t], threshold_frame(maps[t][None], settings)[0]), t
    assert labels[0].max() == 2 and labels[1].max() == 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == ("warning: found no objects in 1 of 3 frames (threshold channel 1 'Cells', low 0.5): "
                         "see --threshold"), lines
    none = "channel=BackGround,min_size=5000,max_size=5000"  # by class name, in any case
    overridden = pmaps(tmp_path, cells_project, "maps.h5", extra=("--threshold", none,
                                                                  "--output_filename_format", "bg"))
    assert overridden.returncode == 0, overridden.stderr
    assert "found no objects in 3 of 3 frames (threshold channel 0 'Background', low 0.5)" in overridden.stderr


@pytest.mark.parametrize("source, fmt", [("Objects", "hdf5"), ("Object Features", "csv")])
def test_an_objects_export_without_objects_warns_and_succeeds(mitocheck, tmp_path, source, fmt):  # noqa: F811
    result = run_cli("--headless", "--no-progress", "--project", mitocheck, "--export_source", source,
                     "--output_format", fmt, "--output_filename_format", str(tmp_path / "none"), "--workers", "1",
                     "--cutout_subregion", FIRST_FRAMES,
                     "--threshold", "channel=1,min_size=100000,max_size=100000")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "warning: found no objects in 3 of 3 frames (threshold channel 1 'Label 2', low 0.5): see --threshold")
    some = run_cli("--headless", "--no-progress", "--project", mitocheck, "--export_source", source,
                   "--output_format", fmt, "--output_filename_format", str(tmp_path / "some"), "--workers", "1",
                   "--cutout_subregion", FIRST_FRAMES.replace("3", "2"), "--threshold", "channel=1")
    assert some.returncode == 0 and "warning" not in some.stderr, some.stderr


@pytest.mark.parametrize("source", ["Objects", "Object Features"])
def test_an_unsupported_method_is_refused_alike_for_objects_and_their_features(mitocheck, source):  # noqa: F811
    with h5py.File(mitocheck, "r+") as f:
        group = f.create_group("ThresholdTwoLevels")
        group["CurOperator"], group["SingleThreshold"], group["Channel"] = 2, 0.5, 1
    result = run_cli("--headless", "--no-progress", "--project", mitocheck, "--export_source", source,
                     "--workers", "1")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"ilastik-desktop: error: {mitocheck}: ThresholdTwoLevels/CurOperator is 2 (graph-cut thresholding), which "
        "ilastik-desktop does not support; choose Simple or Hysteresis (--threshold method=simple or "
        "method=hysteresis)")


def test_a_map_given_twice_is_said_so(tmp_path, data_dir):
    write_h5(tmp_path / "maps.h5", cell_maps(1), "tyxc")
    result = pmaps(tmp_path, os.path.join(data_dir, OC_PROJECT), "maps.h5", "maps.h5")
    assert result.returncode == 1, result.stderr
    assert "[2/2] skipped maps.h5: this map was given twice; it is written once" in result.stderr
    assert "file name pattern" not in result.stderr


def test_an_output_named_as_the_map_would_overwrite_its_probability_map(tmp_path, data_dir):
    write_h5(tmp_path / "maps.h5", cell_maps(1), "tyxc")
    result = pmaps(tmp_path, os.path.join(data_dir, OC_PROJECT), "maps.h5", extra=("--output_filename_format",
                                                                                     "{dataset_dir}/maps"))
    assert result.returncode == 2
    assert "the export would overwrite its own probability map" in result.stderr and "raw data" not in result.stderr


def test_a_label_image_is_not_taken_for_a_map(tmp_path, data_dir):
    project = os.path.join(data_dir, OC_PROJECT)
    write_h5(tmp_path / "maps.h5", cell_maps(2), "tyxc")
    first = pmaps(tmp_path, project, "maps.h5")
    assert first.returncode == 0, first.stderr
    assert objects(str(tmp_path / "maps_Objects.h5")).dtype == np.uint32
    again = pmaps(tmp_path, project, "*.h5", extra=("--output_filename_format", "{dataset_dir}/{nickname}_again"))
    assert again.returncode == 1, again.stderr
    assert ("skipped maps_Objects.h5: maps_Objects.h5/exported_data: looks like a label image, not probabilities: "
            "its pixel type is uint32 and it has no drange attribute; give it a drange attribute if it is a "
            "probability map") in again.stderr, again.stderr
    assert "batch: 1 of 2 files written, 1 failed" in again.stderr
    with h5py.File(tmp_path / "maps_Objects.h5", "r+") as f:
        f["exported_data"].attrs["drange"] = (0, 1)
    declared = pmaps(tmp_path, project, "maps_Objects.h5", extra=("--output_filename_format", "declared"))
    assert declared.returncode == 0, declared.stderr
