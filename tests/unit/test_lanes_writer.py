"""Saving several lanes: lanes added in the app are written in ilastik 1.4's layout (``Input Data/infos/laneNNNN``
with ilastik's fields, ``PixelClassification/LabelSets/labelsNNN``), our reader reads them back, and the layout
of every lane matches the one of a project ilastik wrote."""

import os

import h5py
import numpy as np

from backend.compute.geometry import Roi
from backend.io.dataset import open_lane
from backend.io.project import open_project
from backend.io.project_writer import LaneLabels, RawInput, Training, label_block, save_training, write_project
from backend.io.training import label_blocks, project_samples, retrain_project
from backend.io.writers import axistags_json
from ilastik_desktop._qt.dialogs.new_project import FIRST_FEATURES

SHAPES = {"first": (12, 50, 60), "second": (10, 40, 70), "third": (12, 64, 48)}


def write_image(folder, name: str) -> str:
    path = os.path.join(folder, f"{name}.h5")
    with h5py.File(path, "w") as f:
        data = np.random.default_rng(len(name)).integers(0, 255, SHAPES[name], dtype=np.uint8)
        f.create_dataset("data", data=data).attrs["axistags"] = axistags_json("zyx")
    return path


def labels_of(lane: int, shape) -> list[tuple[Roi, np.ndarray]]:
    roi = Roi((0, 2 + lane, 10, 5 * lane), (1, 4 + lane, 30, 5 * lane + 25))
    values = np.zeros(roi.shape, np.uint8)
    values[0, 0, :, :10] = 1
    values[0, 1, 5:, 10:] = 2
    return [(roi, values)]


def three_lanes(tmp_path) -> tuple[str, list[list[tuple[Roi, np.ndarray]]]]:
    """A one-lane project saved with two images added as lanes, and the labels of each lane."""
    images = [write_image(tmp_path, name) for name in SHAPES]
    path = str(tmp_path / "project.ilp")
    write_project(path, "first.h5/data", "zyx", SHAPES["first"], FIRST_FEATURES, ("a", "b"),
                  ((255, 0, 0), (0, 255, 0)), (), None, nickname="first")
    labels = [labels_of(lane, SHAPES[name]) for lane, name in enumerate(SHAPES)]
    lanes = []
    for lane, (image, name) in enumerate(zip(images, SHAPES)):
        raw_input = RawInput(os.path.basename(image) + "/data", "zyx", SHAPES[name], name) if lane else None
        blocks = [label_block(roi, values, "zyx") for roi, values in labels[lane]]
        lanes.append(LaneLabels(lane, "zyx", blocks, raw_input))
    save_training(path, Training(FIRST_FEATURES, ("a", "b"), ((255, 0, 0), (0, 255, 0)), lanes, None, 0))
    return path, labels


def test_lanes_added_in_the_app_are_saved_and_read_back(tmp_path):
    path, labels = three_lanes(tmp_path)
    project = open_project(path)
    assert [lane.nickname for lane in project.lanes] == list(SHAPES)
    assert [lane.axes for lane in project.lanes] == ["zyx"] * 3
    assert [lane.shape for lane in project.lanes] == list(SHAPES.values())
    for lane in range(3):
        source = open_lane(project, lane)
        assert source.spatial_shape == (1, *SHAPES[list(SHAPES)[lane]])
        read = list(label_blocks(project, source, lane))
        assert len(read) == 1
        assert read[0][0] == labels[lane][0][0] and np.array_equal(read[0][1], labels[lane][0][1])


def test_the_written_lanes_have_the_layout_of_an_ilastik_project(tmp_path, data_dir):
    path, _ = three_lanes(tmp_path)

    def layout(group: h5py.Group) -> dict[str, object]:
        found = {}
        group.visititems(lambda name, item: found.__setitem__(
            name, str(item.dtype) if isinstance(item, h5py.Dataset) else "group"))
        return found

    def string_kinds(group: h5py.Group) -> dict[str, object]:
        return {name: h5py.check_string_dtype(group[name].dtype) for name in group}

    with h5py.File(os.path.join(data_dir, "ilastik-api", "PixelClass.ilp"), "r") as ilastik, \
            h5py.File(path, "r") as ours:
        expected = layout(ilastik["Input Data/infos/lane0000"])
        strings = string_kinds(ilastik["Input Data/infos/lane0000/Raw Data"])
        block = ilastik["PixelClassification/LabelSets/labels000/block0000"]
        assert sorted(ours["Input Data/infos"]) == ["lane0000", "lane0001", "lane0002"]
        assert sorted(ours["PixelClassification/LabelSets"]) == ["labels000", "labels001", "labels002"]
        for lane in range(3):
            info = ours[f"Input Data/infos/lane{lane:04d}"]
            assert layout(info) == expected
            assert string_kinds(info["Raw Data"]) == strings
            written = ours[f"PixelClassification/LabelSets/labels{lane:03d}/block0000"]
            assert written.dtype == block.dtype and written.ndim == block.ndim + 1  # zyxc here, yxc there
            assert sorted(written.attrs) == sorted(block.attrs)
        first, added = ours["Input Data/infos/lane0000/Raw Data"], ours["Input Data/infos/lane0001/Raw Data"]
        assert added["__class__"][()] == b"RelativeFilesystemDatasetInfo" and added["filePath"][()] == b"second.h5/data"
        assert first["datasetId"][()] != added["datasetId"][()]


def test_retraining_headless_learns_from_the_labels_of_every_lane(tmp_path):
    path, labels = three_lanes(tmp_path)
    project = open_project(path)
    source = open_lane(project, 1)  # --lane 1 --retrain
    x, y = project_samples(project, source, 1)
    assert len(y) == sum(int((values > 0).sum()) for lane in labels for _, values in lane)
    assert sorted(np.unique(y)) == [1, 2]
    classifier = retrain_project(project, source, 1)
    assert open_project(path).classifier.known_labels == classifier.known_labels == (1, 2)
