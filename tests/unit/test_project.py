import os
import shutil
import tracemalloc

import h5py
import numpy as np
import pytest

from backend.compute.threshold import ThresholdSettings
from backend.errors import DataError, ProjectError
from backend.io.dataset import open_lane
from backend.io.project import open_project
from backend.io.project_pipeline import build_pipeline
from backend.io.training import label_blocks


def test_seed_project_1_2(data_dir):
    p = open_project(os.path.join(data_dir, "seed", "pc.ilp"))
    assert p.version == "1.2.0" and p.workflow == "Pixel Classification"
    lane = p.lanes[0]
    assert (lane.file_path, lane.location, lane.axes, lane.nickname) == (
        "t063_preprocessed.tif", "FileSystem", "yx", "t063_preprocessed")
    assert p.label_names == ("Label 1", "Label 2")
    assert p.label_colors == ((255, 0, 0), (0, 255, 0))
    assert p.features.compute_in_2d is None and p.features.selected_count == 25
    c = p.classifier
    assert len(c.forests) == 4 and c.tree_count == 100 and c.known_labels == (1, 2)
    assert c.feature_count == 33 and len(c.feature_names) == 33
    assert p.threshold is None


def test_3d_project_and_pipeline(data_dir):
    p = open_project(os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp"))
    source = open_lane(p)
    assert source.axes == "zyxc" and source.shape == (1, 64, 64, 64, 1)
    pipeline = build_pipeline(p, source.channels, True)
    assert pipeline.features.column_count == 11 and pipeline.label_count == 2
    assert pipeline.features.column_names()[0] == "Gaussian Smoothing (σ=0.3)"


def test_png_project_axes_adapt_to_a_grayscale_file(data_dir):
    p = open_project(os.path.join(data_dir, "ilastik-api", "PixelClass.ilp"))
    assert p.lanes[0].axes == "yxc"
    source = open_lane(p, raw_data=os.path.join(data_dir, "ilastik-api", "Data_1channel.png"))
    assert source.shape == (1, 1, 128, 128, 1)


def test_time_series_project(data_dir):
    p = open_project(os.path.join(data_dir, "ilastik-timeseries", "mitocheckPixelClassification.ilp"))
    source = open_lane(p)
    assert source.axes == "txyzc" and source.spatial_shape == (9, 1, 105, 99)
    assert len(p.classifier.forests) == 40 and p.classifier.feature_count == 49  # 7 + 4 x 6 + 2 x 12


def test_object_classification_project_threshold_settings(data_dir):
    p = open_project(os.path.join(data_dir, "ilastik-timeseries", "pc-oc-133.ilp"))
    assert p.workflow == "Object Classification (from pixel classification)"
    assert p.threshold == ThresholdSettings(method=0, min_size=10, max_size=1_000_000, high=0.8, low=0.5,
                                            sigmas=(1.0, 1.0, 1.0), channel=0, core_channel=0)
    assert p.lanes[0].file_path == "5t2d1c.h5/data" and p.lanes[0].axes == "tyxc"
    with pytest.raises(DataError, match="5t2d1c.h5"):
        open_lane(p)


def test_untrained_and_empty_projects(data_dir):
    untrained = open_project(os.path.join(data_dir, "ilastik-api", "PixelClassNoClassifier.ilp"))
    assert untrained.classifier is None
    with pytest.raises(ProjectError, match="no trained classifier"):
        untrained.require_classifier()
    with pytest.raises(ProjectError, match="no input data"):
        open_project(os.path.join(data_dir, "ilastik-api", "PixelClassNoData.ilp"))


@pytest.fixture
def project_3d(data_dir, tmp_path):
    """A copy of the shared 3D project (to be damaged) and its raw data."""
    for name in ("PixelClass3D.ilp", "Data_3D.npy"):
        shutil.copyfile(os.path.join(data_dir, "ilastik-api", name), tmp_path / name)
    return tmp_path / "PixelClass3D.ilp"


def _threshold_group(path, sigma_x: float) -> None:
    with h5py.File(path, "r+") as f:
        group = f.create_group("ThresholdTwoLevels")
        for key, value in {"CurOperator": 1, "MinSize": 5, "MaxSize": 500, "HighThreshold": 0.7,
                           "LowThreshold": 0.4, "Channel": 1, "CoreChannel": 1}.items():
            group[key] = value
        for axis in "zy":
            group[f"SmootherSigma/{axis}"] = 1.0
        group["SmootherSigma/x"] = sigma_x


def test_the_smoothing_sigmas_are_bounded_as_on_the_command_line(project_3d):
    _threshold_group(project_3d, 50.0)
    assert open_project(str(project_3d)).threshold == ThresholdSettings(1, 5, 500, 0.7, 0.4, (1.0, 1.0, 50.0), 1, 1)
    with h5py.File(project_3d, "r+") as f:
        f["ThresholdTwoLevels/SmootherSigma/x"][()] = 1e9
    with pytest.raises(ProjectError, match=r"PixelClass3D.ilp: /ThresholdTwoLevels/SmootherSigma/x: is 1e\+09, "
                                           r"outside 0 to 50"):
        open_project(str(project_3d))


def test_a_classifier_knowing_more_labels_than_the_project_has_classes_is_refused(project_3d):
    with h5py.File(project_3d, "r+") as f:
        del f["PixelClassification/ClassifierForests/known_labels"]
        f["PixelClassification/ClassifierForests/known_labels"] = np.array([1, 65535], np.uint32)
    with pytest.raises(ProjectError, match="known_labels: holds values outside 0 to 99"):
        open_project(str(project_3d))


def test_ilastiks_empty_placeholders_read_as_nothing(project_3d):
    with h5py.File(project_3d, "r+") as f:
        for name in ("LabelNames", "LabelColors", "PmapColors"):
            del f[f"PixelClassification/{name}"]
            f[f"PixelClassification/{name}"] = np.zeros(1)
            f[f"PixelClassification/{name}"].attrs["isEmpty"] = True
        del f["PixelClassification/ClassifierForests"]
    project = open_project(str(project_3d))
    assert project.label_names == () and project.label_colors == () and project.classifier is None


def test_a_label_block_declaring_two_billion_voxels_is_refused_before_it_is_read(project_3d):
    block = "PixelClassification/LabelSets/labels000/block0000"
    with h5py.File(project_3d, "r+") as f:
        axistags = f[block].attrs["axistags"]
        del f[block]
        ds = f.create_dataset(block, shape=(2048, 1024, 1024, 1), dtype=np.uint8, chunks=(64, 64, 64, 1),
                              compression="gzip")
        ds.attrs["blockSlice"], ds.attrs["axistags"] = "[0:2048,0:1024,0:1024,0:1]", axistags
    assert os.path.getsize(project_3d) < 1_000_000
    project = open_project(str(project_3d))
    source = open_lane(project)
    tracemalloc.start()
    try:
        with pytest.raises(ProjectError, match=r"block0000: blockSlice \[0:2048,0:1024,0:1024,0:1\] \(zyxc\) lies "
                                               r"outside the image \(1 x 64 x 64 x 64 tzyx"):
            list(label_blocks(project, source))
        assert tracemalloc.get_traced_memory()[1] < 20_000_000
    finally:
        tracemalloc.stop()


def test_labels_above_the_projects_classes_are_refused(project_3d):
    block = "PixelClassification/LabelSets/labels000/block0001"
    with h5py.File(project_3d, "r+") as f:
        f[block][0, 0, 0, 0] = 3
    project = open_project(str(project_3d))
    blocks = label_blocks(project, open_lane(project))
    roi, labels = next(blocks)
    assert roi.shape == (1, 1, 3, 3) and labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
    with pytest.raises(ProjectError, match="block0001: holds values outside 0 to 2"):
        next(blocks)
