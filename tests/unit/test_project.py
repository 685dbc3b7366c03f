import os

import pytest

from backend.compute.threshold import ThresholdSettings
from backend.errors import DataError, ProjectError
from backend.io.dataset import open_lane
from backend.io.project import open_project
from backend.io.project_pipeline import build_pipeline


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
