"""Several images per project (ilastik's lanes) in the window: images added through File > Add images, the lane
switcher showing any lane with its labels and undo history, one classifier trained on the labels of every lane,
Save writing every lane, and the headless export of each lane (``--lane``) equal to what the window shows."""

import io
import json

import h5py
import numpy as np
import pytest
from PyQt5 import QtCore, QtWidgets
from PyQt5.QtTest import QTest

from backend.compute.geometry import Roi
from backend.io.dataset import open_lane
from backend.io.project import open_project
from backend.io.synthetic import blob_volume
from backend.io.training import label_blocks
from backend.io.writers import axistags_json
from ilastik_desktop._qt.panels.lanes import add_images_dialog
from ilastik_desktop.runtime.demo import write_demo_project
from tests.conftest import run_cli
from tests.gui.conftest import open_and_settle
from tests.integration.webserver import http_get

pytestmark = pytest.mark.timeout(600)


def write_image(path: str, shape: tuple[int, int, int], seed: int) -> str:
    image, _ = blob_volume(shape, seed=seed, density=2e-4)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=image).attrs["axistags"] = axistags_json("zyx")
    return path


def paint(qtbot, window, label: int, column: int) -> None:
    """A vertical stroke of class ``label`` at x = ``column`` in the xy view."""
    panel = window.training.panel
    panel.classes.button(label).setChecked(True)
    window.views[0].stroked.emit([(row, column) for row in range(8, 40)])


def show_lane(qtbot, window, key) -> None:
    """Choose another lane in the switcher with the keyboard, and wait until its views are complete."""
    combo = window.lane_switcher.combo
    with qtbot.waitSignal(window.opened, timeout=60_000):
        QTest.keyClick(combo, key)
    qtbot.waitUntil(window.loader.is_settled, timeout=180_000)


def one_scroll_area_each(window) -> bool:
    """Every panel of the side panel sits in one scroll area (two over one panel resize it in turn without end)."""
    managed = [area.widget() for area in window.findChildren(QtWidgets.QScrollArea) if area.widget() is not None]
    return len(managed) == len(set(managed)) and window.training.panel in managed


def shown_probabilities(window) -> tuple[int, np.ndarray, Roi]:
    values, roi = window.loader.shown("xy", "Probabilities")
    return window.model.position[1], values.copy(), roi


def test_three_lanes_trained_together_saved_and_exported_headless(qtbot, window, tmp_path):
    folder = tmp_path / "demo"
    path = write_demo_project(str(folder), shape=(24, 64, 64), trees=10)
    images = [write_image(str(folder / "second.h5"), (20, 56, 72), 5),
              write_image(str(folder / "third.h5"), (24, 64, 48), 9)]
    open_and_settle(qtbot, window, path)
    controller = window.training.controller
    window.training.panel.live.setChecked(False)  # trained once, on the labels of every lane
    window.training.panel.paint.setChecked(True)

    # File > Add images: the axes guessed, OK adds both as lanes in the background
    dialog = add_images_dialog(window, [f"{image}/data" for image in images])
    qtbot.waitUntil(lambda: not dialog.guessing(), timeout=30_000)  # read in the background
    assert [dialog.table.item(row, 1).text() for row in range(2)] == ["zyx", "zyx"]
    assert dialog.table.item(0, 2).text() == "20 x 56 x 72 uint8"
    ok = dialog.findChild(QtWidgets.QDialogButtonBox).button(QtWidgets.QDialogButtonBox.Ok)
    QTest.mouseClick(ok, QtCore.Qt.LeftButton)
    combo = window.lane_switcher.combo
    qtbot.waitUntil(lambda: combo.count() == 3, timeout=30_000)
    assert [combo.itemText(i) for i in range(3)] == ["0: demo_raw", "1: second-data", "2: third-data"]
    assert combo.currentIndex() == 0 and controller.dirty

    paint(qtbot, window, 1, 12)
    paint(qtbot, window, 2, 50)
    lane0_labels = controller.store.region(Roi.from_shape(controller.store.grid.shape)).copy()
    window.model.set_layer("Labels", opacity=0.6)
    combo.setFocus()
    show_lane(qtbot, window, QtCore.Qt.Key_Down)
    assert window.document.lane == 1 and window.document.source.spatial_shape == (1, 20, 56, 72)
    assert window.model.layer("Labels").opacity == 0.6  # the layers as the user set them
    assert not controller.store.blocks  # lane 1 has no labels yet
    paint(qtbot, window, 2, 20)
    paint(qtbot, window, 1, 60)
    assert window.views[0].buffers["Labels"][20, 20, 3] > 0
    with qtbot.waitSignal(window.training.trained, timeout=180_000) as trained:
        window.training.panel.train.emit()
    assert " of 3 lanes " in trained.args[0], trained.args[0]
    qtbot.waitUntil(window.loader.is_settled, timeout=180_000)
    shown = {1: shown_probabilities(window)}
    show_lane(qtbot, window, QtCore.Qt.Key_Down)
    assert window.document.lane == 2
    shown[2] = shown_probabilities(window)
    show_lane(qtbot, window, QtCore.Qt.Key_Home)
    assert window.document.lane == 0 and combo.currentIndex() == 0
    qtbot.waitUntil(lambda: one_scroll_area_each(window))  # the old areas go at the next turn of the event loop
    # lane 0's labels and undo history were kept while other lanes were shown
    whole = Roi.from_shape(controller.store.grid.shape)
    assert np.array_equal(controller.store.region(whole), lane0_labels)
    assert window.views[0].buffers["Labels"][20, 12, 3] > 0
    controller.undo()
    assert window.views[0].buffers["Labels"][20, 50, 3] == 0
    controller.redo()
    assert np.array_equal(controller.store.region(whole), lane0_labels)
    shown[0] = shown_probabilities(window)

    with qtbot.waitSignal(window.training.saved, timeout=60_000) as saved:
        window.save_action.trigger()
    assert saved.args[0] == f"saved {path}" and not controller.dirty

    # our reader reads every lane with its labels
    project = open_project(path)
    assert [lane.nickname for lane in project.lanes] == ["demo_raw", "second-data", "third-data"]
    stores = {lane.index: lane.store for lane in controller.lanes.loaded()}
    for lane in range(3):
        source = open_lane(project, lane)
        painted = stores[lane].region(Roi.from_shape(source.spatial_shape))
        read = np.zeros_like(painted)
        for roi, values in label_blocks(project, source, lane):
            read[roi.slices()] = values
        assert np.array_equal(read, painted) and (lane == 2 or painted.any())

    # the headless export of each lane equals the probabilities the window showed for it
    for lane, (z, values, roi) in shown.items():
        output = tmp_path / f"lane{lane}"
        result = run_cli("--headless", "--no-progress", "--project", path, "--lane", str(lane), "--output_format",
                         "npy", "--output_filename_format", str(output), timeout=300)
        assert result.returncode == 0, result.stderr
        exported = np.load(f"{output}.npy")[z, roi.start[2]:roi.stop[2], roi.start[3]:roi.stop[3]]
        assert exported.shape == values.shape and np.abs(exported - values).max() < 1e-5, lane

    # reopened, the project shows its three lanes with their labels
    open_and_settle(qtbot, window, path)
    assert window.lane_switcher.combo.count() == 3
    window.lane_switcher.combo.setFocus()
    show_lane(qtbot, window, QtCore.Qt.Key_Down)
    assert window.document.lane == 1 and window.views[0].buffers["Labels"][20, 20, 3] > 0
    for lane in window.training.controller.lanes.loaded(wait=True):
        whole = Roi.from_shape(lane.store.grid.shape)
        assert np.array_equal(lane.store.region(whole), stores[lane.index].region(whole)), lane.index


def test_serving_with_another_lane_shown_serves_every_lane_as_itself_with_the_new_classifier(qtbot, window, tmp_path):
    folder = tmp_path / "demo"
    path = write_demo_project(str(folder), shape=(16, 48, 48), trees=10)
    image = write_image(str(folder / "second.h5"), (12, 40, 56), 3)
    open_and_settle(qtbot, window, path)
    dialog = add_images_dialog(window, [f"{image}/data"])
    QTest.mouseClick(dialog.findChild(QtWidgets.QDialogButtonBox).button(QtWidgets.QDialogButtonBox.Ok),
                     QtCore.Qt.LeftButton)
    combo = window.lane_switcher.combo
    qtbot.waitUntil(lambda: combo.count() == 2, timeout=30_000)
    combo.setFocus()
    show_lane(qtbot, window, QtCore.Qt.Key_Down)
    window.training.panel.live.setChecked(False)
    window.training.panel.paint.setChecked(True)
    paint(qtbot, window, 1, 10)
    paint(qtbot, window, 2, 40)
    with qtbot.waitSignal(window.training.trained, timeout=180_000):
        window.training.panel.train.emit()
    qtbot.waitUntil(window.loader.is_settled, timeout=180_000)
    serve = window.open_serve()
    serve.host.setText("127.0.0.1")
    serve.port.setValue(0)
    with qtbot.waitSignal(serve.serving, timeout=60_000) as started:
        serve.start_button.click()
    url = f"{started.args[0]}/t/{serve.server.token}"
    lanes = json.loads(http_get(url + "/api/v1/info")[1])["lanes"]
    assert [lane["shape_tzyx"] for lane in lanes] == [[1, 16, 48, 48], [1, 12, 40, 56]]
    # every lane with the classifier trained in the window, not the one the project was saved with
    assert lanes[0]["classifier"] == lanes[1]["classifier"] == window.document.gateway.pipeline_fingerprint
    z, values, roi = shown_probabilities(window)
    region = (f"{url}/api/v1/lanes/1/probabilities?start={z},{roi.start[2]},{roi.start[3]}"
              f"&stop={z + 1},{roi.stop[2]},{roi.stop[3]}&format=npy")
    status, body, _ = http_get(region)
    assert status == 200 and np.array_equal(np.load(io.BytesIO(body))[0], values)
    combo.setFocus()
    show_lane(qtbot, window, QtCore.Qt.Key_Up)  # showing another lane does not stop the service
    assert serve.server is not None and window.document.lane == 0
    assert http_get(region)[0] == 200
    with qtbot.waitSignal(serve.serving, timeout=30_000):
        serve.stop_button.click()
    qtbot.waitUntil(lambda: not serve.controller.busy, timeout=30_000)
    # stopping closed the gateway of lane 0 it opened, not the window's: the shown lane still computes
    window.model.move("z", z - 1)
    qtbot.waitUntil(window.loader.is_settled, timeout=60_000)
    assert window.loader.shown("xy", "Probabilities")[0].any()
