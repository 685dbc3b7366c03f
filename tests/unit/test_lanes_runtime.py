"""A project's lanes in the training controller, without Qt: every lane loaded in the background and trained
on together, a lane whose raw data is missing left out (and said so), images that do not fit refused, a
class deleted from every lane, any lane shown with its own labels."""

from __future__ import annotations

import os
from concurrent.futures import Future

import h5py
import numpy as np
import pytest

from backend.compute.geometry import Roi
from backend.config import TrainingConfig
from backend.io.dataset import open_lane
from backend.io.label_journal_format import find_journal
from backend.io.project import open_project
from backend.io.training import label_blocks
from backend.io.writers import axistags_json
from backend.service.export import default_block_shape
from backend.service.gateway import Gateway, GatewayConfig
from ilastik_desktop.runtime.document import open_document
from ilastik_desktop.runtime.training import TrainingController
from tests.helpers import wait_for
from tests.unit.test_lanes_writer import three_lanes
from tests.unit.test_runtime_controllers import Heard

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def lanes(tmp_path, services):
    """A controller over lane 0 of a three-lane project whose lanes all hold labels of classes 1 and 2."""
    path, labels = three_lanes(tmp_path)
    def make_gateway(source, pipeline) -> Gateway:  # the controller's to close, not the services'
        return Gateway(source, pipeline, services.executor, services.cache,
                       GatewayConfig(default_block_shape(source.spatial_shape)))

    controller = TrainingController(open_document(path, services), services.executor, TrainingConfig(),
                                    make_gateway=make_gateway)
    yield controller, path
    controller.close()  # closes the lanes' documents but the one shown, which the window closes
    controller.document.close()
    services.gateways.clear()  # all closed already


def trained(controller) -> str:
    heard = Heard(controller.trained)
    controller.train()
    wait_for(lambda: heard.values, timeout=120)
    return heard.values[0]


def test_training_learns_from_every_lane_and_another_lane_is_shown_with_its_labels(lanes):
    controller, path = lanes
    message = trained(controller)
    assert " of 3 lanes " in message and controller.classifier.known_labels == (1, 2), message
    shown = Heard(controller.lane_shown)
    controller.show_lane(2)
    wait_for(lambda: shown.values, timeout=30)
    document = shown.values[0]
    assert controller.document is document and document.lane == 2 and controller.store is document.labels
    assert document.source.spatial_shape == (1, 12, 64, 48)
    assert document.gateway.pipeline is controller.lanes.loaded()[0].document.pipeline  # the trained one
    assert controller.store.stroke((0, 5, 0, 0), "y", "x", [(50, 40)], 2, 1)
    assert controller.lanes.loaded()[0].store.region(Roi((0, 5, 50, 40), (1, 6, 51, 41))).item() == 0


def test_a_lane_whose_raw_data_is_missing_is_left_out_and_cannot_be_shown(tmp_path, services):
    path, _ = three_lanes(tmp_path)
    os.remove(tmp_path / "third.h5")
    controller = TrainingController(open_document(path, services), services.executor, TrainingConfig())
    try:
        message = trained(controller)
        assert " of 2 lanes " in message and "left out lane 2: " in message and "third.h5" in message, message
        heard, listed = Heard(controller.message), Heard(controller.lanes_changed)
        controller.show_lane(2)
        wait_for(lambda: listed.values, timeout=30)
        assert heard.values[-1].startswith("could not show the lane: ") and controller.document.lane == 0
        # Save keeps the labels of the lane it could not load
        with h5py.File(path, "r") as f:
            before = f["PixelClassification/LabelSets/labels002/block0000"][()]
        controller.save(controller.document.threshold).result(timeout=60)
        with h5py.File(path, "r") as f:
            assert np.array_equal(f["PixelClassification/LabelSets/labels002/block0000"][()], before)
    finally:
        controller.close()


def test_an_image_that_does_not_fit_the_project_is_not_added(lanes, tmp_path):
    controller, path = lanes
    flat = str(tmp_path / "flat.h5")
    with h5py.File(flat, "w") as f:
        f.create_dataset("data", data=np.zeros((30, 40), np.uint8)).attrs["axistags"] = axistags_json("yx")
    heard, added = Heard(controller.message), Heard(controller.lanes_changed)
    controller.add_images([(flat + "/data", None)])
    wait_for(lambda: heard.values, timeout=30)
    assert "flat.h5" in heard.values[0] and "is 2D but the project's images are 3D" in heard.values[0]
    assert not added.values and len(controller.lanes) == 3 and len(controller.lane_names) == 3
    controller.add_images([(str(tmp_path / "second.h5/data"), "zyx")])
    wait_for(lambda: added.values, timeout=30)
    assert controller.lane_names[-1] == "second-data"  # as ilastik names it: the file and its internal path
    assert len(controller.lanes) == 4 and controller.dirty


def test_a_class_deleted_is_deleted_from_every_lane(lanes):
    controller, path = lanes
    controller.lanes.loaded(wait=True)
    controller.add_class()  # a project keeps two classes at least
    controller.delete_class(1)
    controller.save(controller.document.threshold).result(timeout=60)
    project = open_project(path)
    assert len(project.label_names) == 2 and project.label_names[0] == "b"
    for lane in range(3):
        values = [labels for _, labels in label_blocks(project, open_lane(project, lane), lane)]
        assert values and all(set(np.unique(v)) <= {0, 1} and (v == 1).any() for v in values)


def test_labels_of_a_lane_and_of_a_lane_added_since_the_save_come_back_from_the_journal(lanes, tmp_path, services):
    controller, path = lanes
    controller.lanes.loaded(wait=True)
    controller.stroke((0, 3, 0, 0), "y", "x", [(5, 5), (30, 40)], 2, 2)
    painted = {0: {i: b.copy() for i, b in controller.store.blocks.items()}}
    added, shown = Heard(controller.lanes_changed), Heard(controller.lane_shown)
    controller.add_images([(str(tmp_path / "second.h5/data"), "zyx")])
    wait_for(lambda: added.values, timeout=30)
    controller.show_lane(3)
    wait_for(lambda: shown.values, timeout=30)
    controller.stroke((0, 5, 0, 0), "y", "x", [(10, 10), (20, 30)], 2, 1)
    painted[3] = {i: b.copy() for i, b in controller.store.blocks.items()}
    assert controller.journal.wait_written(10)
    controller.journal.close()  # the session ends without saving: the journal stays
    journal = find_journal(path, str(tmp_path / "config"))
    assert set(journal.lanes) == {3} and journal.lanes[3][0] == str(tmp_path / "second.h5/data")

    again = TrainingController(open_document(path, services), services.executor, TrainingConfig())
    try:
        again.restore(journal)
        wait_for(lambda: len(again.lanes) == 4, timeout=30)
        stores = {lane.index: lane.store for lane in again.lanes.loaded(wait=True)}
        for lane, blocks in painted.items():
            wait_for(lambda s=stores[lane], b=blocks: all(np.array_equal(s.blocks.get(i), v) for i, v in b.items()),
                     timeout=30)
        assert again.lane_names[3] == "second-data" and again.dirty
    finally:
        again.close()
        again.document.close()


def test_a_class_is_not_deleted_while_a_lane_cannot_be_loaded(tmp_path, services):
    path, _ = three_lanes(tmp_path)
    os.remove(tmp_path / "third.h5")
    controller = TrainingController(open_document(path, services), services.executor, TrainingConfig())
    try:
        wait_for(lambda: controller.lanes.failures(), timeout=30)
        heard = Heard(controller.message)
        controller.add_class()
        names = controller.names
        controller.delete_class(1)
        assert controller.names == names  # lane 2's labels in the file would keep the old numbers
        assert heard.values[-1].startswith("cannot delete a class now: lane 2 could not be loaded")
    finally:
        controller.close()


def test_the_last_lane_chosen_is_shown_even_if_an_earlier_choice_finishes_later(lanes):
    controller, _ = lanes
    shown = Heard(controller.lane_shown)
    controller.show_lane(2)
    controller.show_lane(0)  # chosen back before lane 2 is ready
    controller.lanes.pool.submit(lambda: None).result(timeout=30)  # lane 2's document was made meanwhile
    assert controller.document.lane == 0 and not shown.values


def test_lanes_closed_while_loading_and_strokes_before_a_session_are_kept(lanes):
    controller, _ = lanes
    lane = controller.lanes.loaded(wait=True)[0]
    lane.session = None
    controller.lanes.touched(0, {(0, 0, 0, 0)})  # as a stroke does while the training thread makes sessions
    assert lane.pending == {(0, 0, 0, 0)}
    controller.lanes.sessions()
    assert not lane.pending and lane.session is not None
    cancelled: Future = Future()
    cancelled.cancel()
    controller.lanes.futures.append(cancelled)  # a lane whose loading was cancelled by closing
    assert len(controller.lanes.loaded()) == 3 and controller.lanes.failures() == []
    assert controller.lanes.not_ready() == ["lane 3 was not loaded (closing)"]
    controller.lanes.futures.pop()
