import dataclasses
import os
import shutil
import tracemalloc

import h5py
import numpy as np
import pytest

from backend.compute.threshold import ThresholdSettings
from backend.errors import DataError, ProjectError, UserError
from backend.io.dataset import open_lane
from backend.io.project import open_project
from backend.io.project_pipeline import build_pipeline
from backend.io.project_writer import write_threshold
from backend.io.training import label_blocks
from backend.service.export import ExportOptions
from ilastik_desktop.cli.main import build_parser, main
from ilastik_desktop.cli.options import settings_from_args
from ilastik_desktop.cli.serve import build_parser as build_serve_parser
from ilastik_desktop.runtime.settings import Settings, export_threshold, parse_threshold


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


@pytest.fixture
def mitocheck_1_2(data_dir, tmp_path):
    """A copy of the shared ilastik 1.2 time-series project (no thresholding saved) with its raw data."""
    folder = os.path.join(data_dir, "ilastik-timeseries")
    shutil.copyfile(os.path.join(folder, "mitocheckPixelClassification.ilp"), tmp_path / "mito.ilp")
    shutil.copytree(os.path.join(folder, "mitocheck_2d+t"), tmp_path / "mitocheck_2d+t")
    return str(tmp_path / "mito.ilp")


def _write_1_2_threshold(path: str, method: int) -> None:
    """ThresholdTwoLevels as ilastik 1.2 wrote it: SingleThreshold beside LowThreshold, no CoreChannel."""
    with h5py.File(path, "r+") as f:
        group = f.create_group("ThresholdTwoLevels")
        for key, value in {"CurOperator": method, "MinSize": 7, "MaxSize": 900, "HighThreshold": 0.75,
                           "LowThreshold": 0.45, "SingleThreshold": 0.3, "Channel": 1,
                           "StorageVersion": b"0.1"}.items():
            group[key] = value
        for axis, sigma in zip("xyz", (2.0, 1.5, 0.0)):
            group[f"SmootherSigma/{axis}"] = sigma


def test_a_1_2_project_keeps_its_single_threshold_and_seeds_hysteresis_on_its_channel(mitocheck_1_2):
    assert open_project(mitocheck_1_2).version == "1.2.0rc10"
    _write_1_2_threshold(mitocheck_1_2, method=0)
    simple = open_project(mitocheck_1_2).threshold
    assert simple == ThresholdSettings(method=0, min_size=7, max_size=900, high=0.75, low=0.3,
                                       sigmas=(0.0, 1.5, 2.0), channel=1, core_channel=0)
    with h5py.File(mitocheck_1_2, "r+") as f:
        f["ThresholdTwoLevels/CurOperator"][()] = 1
    hysteresis = open_project(mitocheck_1_2).threshold  # SingleThreshold is the simple method's only
    assert (hysteresis.method, hysteresis.low, hysteresis.high) == (1, 0.45, 0.75)
    assert (hysteresis.channel, hysteresis.core_channel) == (1, 1)


def test_a_1_2_threshold_saved_again_reads_the_same_in_the_1_4_layout(mitocheck_1_2):
    _write_1_2_threshold(mitocheck_1_2, method=0)
    read = open_project(mitocheck_1_2).threshold
    with h5py.File(mitocheck_1_2, "r+") as f:
        write_threshold(f, read)
    with h5py.File(mitocheck_1_2, "r") as f:
        group = f["ThresholdTwoLevels"]
        assert "SingleThreshold" not in group and group["LowThreshold"][()] == 0.3
        assert group["CoreChannel"][()] == 0 and group["StorageVersion"][()] == b"0.1"
    assert open_project(mitocheck_1_2).threshold == read


@pytest.fixture
def object_project(data_dir, tmp_path):
    """A copy of the shared ilastik 1.3.3 object-classification project (with ThresholdTwoLevels)."""
    shutil.copyfile(os.path.join(data_dir, "ilastik-timeseries", "pc-oc-133.ilp"), tmp_path / "p.ilp")
    return str(tmp_path / "p.ilp")


def _set(path: str, **values) -> None:
    with h5py.File(path, "r+") as f:
        for key, value in values.items():
            f[f"ThresholdTwoLevels/{key}"][()] = value


def test_a_1_4_layout_hysteresis_with_another_core_channel(object_project):
    _set(object_project, CurOperator=1, Channel=1, CoreChannel=0, LowThreshold=0.35, HighThreshold=0.9,
         MinSize=3, MaxSize=77)
    with h5py.File(object_project, "r+") as f:
        f["ThresholdTwoLevels/SmootherSigma/z"][()] = 0.5
    assert open_project(object_project).threshold == ThresholdSettings(
        method=1, min_size=3, max_size=77, high=0.9, low=0.35, sigmas=(0.5, 1.0, 1.0), channel=1, core_channel=0)


@pytest.mark.parametrize("method, name", [(2, "graph-cut thresholding"), (3, "identity-preserving hysteresis")])
def test_unsupported_methods_open_for_pixel_classification_and_refuse_objects(object_project, method, name):
    _set(object_project, CurOperator=method)
    project = open_project(object_project)  # probabilities need no thresholding
    assert project.threshold.method == method and project.classifier is not None
    line = (f"{object_project}: ThresholdTwoLevels/CurOperator is {method} ({name}), which ilastik-desktop does "
            "not support; choose Simple or Hysteresis (--threshold method=simple or method=hysteresis)")
    for kind in ("Probabilities", "Simple Segmentation+Uncertainty"):
        settings = Settings(project=object_project, export=ExportOptions(kind=kind))
        assert export_threshold(settings, project, 2).method == method
    for kind in ("Objects", "Probabilities+Objects", "Object Features"):
        settings = Settings(project=object_project, export=ExportOptions(kind=kind))
        with pytest.raises(UserError) as refused:
            export_threshold(settings, project, 2)
        assert str(refused.value) == line
    chosen = Settings(project=object_project, export=ExportOptions(kind="Objects"), threshold="method=hysteresis",
                      relabel=True)
    assert export_threshold(chosen, project, 2) == dataclasses.replace(
        project.threshold, method=1, relabel=True)


def test_an_unknown_method_is_a_damaged_project(object_project):
    _set(object_project, CurOperator=4)
    with pytest.raises(ProjectError, match=r"p.ilp: /ThresholdTwoLevels/CurOperator: is 4, outside 0 to 3"):
        open_project(object_project)


def test_headless_objects_with_graph_cut_say_so_in_one_line(mitocheck_1_2, tmp_path, capsys):
    _write_1_2_threshold(mitocheck_1_2, method=2)
    code = main(["--headless", "--project", mitocheck_1_2, "--export_source", "Objects",
                 "--output_filename_format", str(tmp_path / "out"), "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err == (f"ilastik-desktop: error: {mitocheck_1_2}: ThresholdTwoLevels/CurOperator is 2 (graph-cut "
                   "thresholding), which ilastik-desktop does not support; choose Simple or Hysteresis "
                   "(--threshold method=simple or method=hysteresis)\n")
    assert not list(tmp_path.glob("out*"))


def test_relabel_is_an_option_of_the_export_and_of_serve(mitocheck_1_2):
    args = build_parser().parse_args(["--headless", "--project", mitocheck_1_2, "--relabel"])
    assert settings_from_args(args).relabel
    assert not settings_from_args(build_parser().parse_args(["--headless", "--project", mitocheck_1_2])).relabel
    assert build_serve_parser().parse_args([mitocheck_1_2, "--relabel"]).relabel
    assert parse_threshold("low=0.4", None, 2, relabel=True) == ThresholdSettings(low=0.4, relabel=True)
