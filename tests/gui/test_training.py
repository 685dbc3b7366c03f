"""Training in the window: scripted strokes on the demo project, live training off the GUI thread, the
overlay recomputed under the new classifier where the labels were painted, Save writing what reopens."""


import gc
import os

import numpy as np
import pytest
from PyQt5 import QtCore, QtWidgets
from PyQt5.QtTest import QTest

from backend.compute.geometry import Roi
from backend.io.project import open_project
from backend.io.training import label_blocks
from backend.service.labels import LabelStore
from ilastik_desktop.runtime.demo import write_demo_project
from tests.conftest import run_cli
from tests.gui.conftest import open_and_settle
from tests.gui.test_brush import LEFT, NO_KEYS, at

pytestmark = pytest.mark.timeout(300)


def test_paint_train_and_save_in_the_window(qtbot, window, tmp_path):
    path = write_demo_project(str(tmp_path / "demo"), shape=(48, 96, 96), trees=10)
    open_and_settle(qtbot, window, path)
    training = window.training
    assert [window.tabs.tabText(i) for i in range(window.tabs.count())][:2] == ["Project", "Training"]
    before_fingerprint = window.document.gateway.pipeline_fingerprint
    z = window.model.position[1]
    xy = window.views[0]
    training.panel.paint.setChecked(True)
    assert all(view.painting for view in window.views)
    before, _ = window.loader.shown("xy", "Probabilities")
    before = before.copy()
    losing = int(np.argmin(before[25, 20])) + 1  # paint the class the project's classifier rejects there
    training.panel.classes.button(losing).setChecked(True)
    training.panel.size.setValue(9)
    slot = window.loader.slots[("xy", "Probabilities")]
    generation = slot.generation
    with qtbot.waitSignal(training.trained, timeout=120_000) as done:
        xy.stroked.emit([(row, 20) for row in range(10, 40)])  # a vertical stroke at x = 20
    assert done.args[0].startswith("trained 100 trees on"), done.args[0]
    assert window.document.gateway.pipeline_fingerprint != before_fingerprint
    # asked again under the new classifier, while the old overlay stays on screen until replaced
    assert slot.generation == generation + 1 and not slot.complete
    assert np.array_equal(window.loader.shown("xy", "Probabilities")[0], before)
    layer = next(layer.name for layer in window.model.layers if layer.kind == "Probabilities")
    assert xy.buffers[layer][..., 3].any()
    overlay = xy.buffers["Labels"]
    assert overlay[25, 20, 3] > 0 and overlay[25, 60, 3] == 0  # the labels layer shows the stroke
    qtbot.waitUntil(window.loader.is_settled, timeout=120_000)
    probabilities, roi = window.loader.shown("xy", "Probabilities")
    assert before[25, 20, losing - 1] < 0.5 < probabilities[25, 20, losing - 1]  # now it wins where painted
    training.panel.undo.emit()
    assert xy.buffers["Labels"][25, 20, 3] == 0 and training.controller.dirty
    training.panel.redo.emit()
    window.threshold_panel.min_size.setValue(25)
    window.threshold_panel.apply()
    with qtbot.waitSignal(training.saved, timeout=60_000) as saved:
        window.save_action.trigger()
    assert saved.args[0] == f"saved {path}" and not training.controller.dirty
    reopened = open_project(path)
    assert reopened.threshold == window.threshold_panel.settings() and reopened.threshold.min_size == 25
    source = window.document.source
    store = LabelStore.from_blocks(source.spatial_shape, label_blocks(reopened, source))
    assert store.region(Roi((0, z, 25, 20), (1, z + 1, 26, 21))).item() == losing
    assert reopened.classifier.tree_count == 100
    assert np.array_equal(store.region(Roi.from_shape(source.spatial_shape)),
                          training.controller.store.region(Roi.from_shape(source.spatial_shape)))

    # the saved project exported headless gives what the window shows under the classifier trained in it
    qtbot.waitUntil(window.loader.is_settled, timeout=120_000)
    shown, roi = window.loader.shown("xy", "Probabilities")
    result = run_cli("--headless", "--no-progress", "--project", path, "--output_format", "npy",
                     "--output_filename_format", str(tmp_path / "exported"), timeout=300)
    assert result.returncode == 0, result.stderr
    exported = np.load(tmp_path / "exported.npy")[z, roi.start[2]:roi.stop[2], roi.start[3]:roi.stop[3]]
    assert exported.shape == shown.shape and np.abs(exported - shown).max() < 1e-5


def test_unsaved_labels_are_asked_about_before_another_project_opens(qtbot, make_window, tmp_path, data_dir):
    path = write_demo_project(str(tmp_path / "demo"), shape=(48, 96, 96), trees=10)
    window = make_window(interactive=True)
    window.journal_policy = "keep"  # labels an earlier test painted on a shared project are not asked about
    open_and_settle(qtbot, window, path)
    window.training.panel.live.setChecked(False)
    window.views[0].stroked.emit([(10, 10)])
    assert window.training.controller.dirty
    questions = []

    def answer(button):
        box = QtWidgets.QApplication.activeModalWidget()
        questions.append(box.text())
        box.button(button).click()

    other = os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp")
    QtCore.QTimer.singleShot(300, lambda: answer(QtWidgets.QMessageBox.Cancel))
    window.open_project(other)
    assert questions == ["Labels, classes or thresholds are unsaved. Save them before opening another project?"]
    assert window.document.project.path == path  # kept
    QtCore.QTimer.singleShot(300, lambda: answer(QtWidgets.QMessageBox.Discard))
    with qtbot.waitSignal(window.opened, timeout=60_000):
        window.open_project(other)
    assert window.document.project.path == other and len(questions) == 2


def test_classes_added_renamed_recoloured_deleted_and_saved_as_a_copy(qtbot, window, tmp_path):
    path = write_demo_project(str(tmp_path / "demo"), shape=(48, 96, 96), trees=10)
    original = open(path, "rb").read()
    open_and_settle(qtbot, window, path)
    training, xy = window.training, window.views[0]
    first = window.document.project.label_names[0]
    training.panel.live.setChecked(False)
    training.controller.add_class()
    assert [b.text() for b in training.panel.classes.buttons()][1:] == [first, window.document.project.label_names[1],
                                                                      "Label 3"]
    layer = window.model.layer("Probability Label 3")
    assert layer.color == (230, 25, 75) and "Probability Label 3" in window.layers_panel.checks
    assert window.threshold_panel.channel.count() == 3
    qtbot.waitUntil(window.loader.is_settled, timeout=120_000)
    assert window.loader.shown("xy", "Probabilities")[0].shape[-1] == 3  # the untrained class is all zero
    training.panel.classes.button(3).setChecked(True)
    training.panel.size.setValue(9)
    xy.stroked.emit([(row, 70) for row in range(10, 40)])
    with qtbot.waitSignal(training.trained, timeout=120_000):
        training.controller.train()
    qtbot.waitUntil(window.loader.is_settled, timeout=120_000)
    assert window.loader.shown("xy", "Probabilities")[0][25, 70, 2] > 0.5  # the new class wins where painted

    training.controller.rename_class(3, "Membrane")
    qtbot.waitUntil(lambda: "Probability Membrane" in xy.overlays, timeout=5000)
    assert "Probability Label 3" not in xy.overlays and xy.buffers["Probability Membrane"][25, 70, 3] > 0
    training.controller.rename_class(1, "Membrane")  # refused: the name is taken
    assert training.panel.status.text() == "another class is already called 'Membrane'"
    training.controller.recolour_class(3, (10, 200, 10))
    assert tuple(xy.buffers["Labels"][25, 70, :3]) == (10, 200, 10)

    training.controller.delete_class(2)
    assert [b.text() for b in training.panel.classes.buttons()][1:] == [first, "Membrane"]
    assert training.controller.store.region(Roi((0, window.model.position[1], 25, 70),
                                     (1, window.model.position[1] + 1, 26, 71))).item() == 2  # renumbered
    assert [x.name for x in window.model.layers if x.kind == "Probabilities"] == [f"Probability {first}",
                                                                                "Probability Membrane"]
    with qtbot.waitSignal(training.trained, timeout=120_000) as done:
        training.controller.train()
    assert done.args[0].startswith("trained"), done.args[0]

    copy = tmp_path / "elsewhere" / "copy.ilp"
    copy.parent.mkdir()
    with qtbot.waitSignal(training.saved, timeout=60_000) as saved:
        training.save(str(copy))
    assert saved.args[0] == f"saved {copy}" and not training.controller.dirty
    assert window.document.project.path == str(copy) and window.windowTitle().startswith("copy.ilp")
    assert open(path, "rb").read() == original  # Save As leaves the original alone
    reopened = open_project(str(copy))
    assert reopened.label_names == (first, "Membrane") and reopened.label_colors[1] == (10, 200, 10)
    assert reopened.classifier.known_labels == (1, 2)
    with qtbot.waitSignal(window.opened, timeout=60_000):
        window.open_project(str(copy))  # its raw data is found from the new folder
    assert window.training.controller.store.region(Roi((0, window.model.position[1], 25, 70),
                                            (1, window.model.position[1] + 1, 26, 71))).item() == 2


def test_the_uncertainty_layer_shows_where_labels_help_most(qtbot, window, tmp_path):
    path = write_demo_project(str(tmp_path / "demo"), shape=(48, 96, 96), trees=10)
    open_and_settle(qtbot, window, path)
    assert not window.model.layer("Uncertainty").visible  # off until asked for, as in ilastik
    window.layers_panel.checks["Uncertainty"].setChecked(True)
    qtbot.waitUntil(lambda: window.loader.is_complete("xy", "Uncertainty"), timeout=120_000)
    qtbot.waitUntil(window.loader.is_settled, timeout=120_000)
    probabilities, _ = window.loader.shown("xy", "Probabilities")
    shown, _ = window.loader.shown("xy", "Uncertainty")
    top = np.sort(probabilities, axis=-1)
    assert np.allclose(shown[..., 0], 1 - (top[..., -1] - top[..., -2]), atol=1e-6)
    alpha = window.views[0].buffers["Uncertainty"][..., 3]
    unsure, sure = np.unravel_index(shown[..., 0].argmax(), alpha.shape), np.unravel_index(shown[..., 0].argmin(),
                                                                                             alpha.shape)
    assert alpha[unsure] > alpha[sure]  # brightest where the classifier hesitates
    window.views[0].hovered.emit(*map(int, unsure))  # the mouse over the most uncertain pixel
    assert f"uncertainty {shown[unsure][0]:.2f}" in window.cursor_label.text()


def test_feature_selection_dialog_as_ilastik_and_training_on_the_new_features(qtbot, window, tmp_path):
    path = write_demo_project(str(tmp_path / "demo"), shape=(12, 96, 96), trees=10)  # 12 slices only
    open_and_settle(qtbot, window, path)
    training = window.training
    dialog = training.choose_features()
    assert len(dialog.boxes) == 6 * 7 and len(dialog.in_2d) == 7
    assert not dialog.boxes[(1, 0)].isEnabled() and dialog.boxes[(0, 0)].isEnabled()  # only smoothing at 0.3
    # ilastik's rule: ceil(3.5 sigma) + 1 slices for 3D; 12 slices allow sigma 3.0 at most, so 3.5+ are 2D only
    assert [box.isEnabled() for box in dialog.in_2d] == [True] * 4 + [False] * 3
    assert all(box.isChecked() for box in dialog.in_2d[4:])
    for (i, j), box in dialog.boxes.items():
        box.setChecked((i, j) in {(0, 2), (2, 2), (5, 4)})  # smoothing and gradient at 1.0, Hessian at 3.5
    with qtbot.waitSignal(training.trained, timeout=120_000) as done:
        dialog.accept()
    assert done.args[0].startswith("trained"), done.args[0]
    assert window.document.pipeline.features.column_count == 1 + 1 + 2  # the Hessian at 3.5 in 2D: 2 eigenvalues
    qtbot.waitUntil(window.loader.is_settled, timeout=120_000)
    with qtbot.waitSignal(training.saved, timeout=60_000):
        training.save()
    reopened = open_project(path)
    assert reopened.features.scales == (0.3, 0.7, 1.0, 1.6, 3.5, 5.0, 10.0)
    assert [row[2] for row in reopened.features.matrix] == [True, False, True, False, False, False]
    assert reopened.features.compute_in_2d[4] and reopened.classifier.feature_count == 4


def test_the_labels_are_a_layer_to_hide_and_fade(qtbot, window, tmp_path):
    path = write_demo_project(str(tmp_path / "demo"), shape=(48, 96, 96), trees=10)
    open_and_settle(qtbot, window, path)
    xy = window.views[0]
    window.training.panel.live.setChecked(False)
    xy.stroked.emit([(30, 30)])
    assert xy.buffers["Labels"][30, 30, 3] == round(255 * 0.8) and xy.overlays["Labels"].isVisible()
    window.layers_panel.sliders["Labels"].setValue(40)
    assert xy.buffers["Labels"][30, 30, 3] == round(255 * 0.4)
    window.layers_panel.checks["Labels"].setChecked(False)
    assert not xy.overlays["Labels"].isVisible()
    window.model.move_layer("Labels", -3)  # listed lower, still drawn above the results
    assert xy.overlays["Labels"].zValue() > max(item.zValue() for name, item in xy.overlays.items() if name != "Labels")


def drag(window, view, column: int, rows: range) -> None:
    """A real stroke down ``column`` of ``view``: the left button pressed, moved with it held, released."""
    handle = window.windowHandle()
    QTest.mousePress(handle, LEFT, NO_KEYS, at(view, rows[0], column))
    for row in rows[1:]:
        QTest.mouseMove(handle, at(view, row, column))
    QTest.mouseRelease(handle, LEFT, NO_KEYS, at(view, rows[-1], column))


def test_a_stroke_painted_during_a_training_replaces_it_and_the_overlay_follows_both(qtbot, window, tmp_path):
    path = write_demo_project(str(tmp_path / "demo"), shape=(48, 96, 96), trees=10)
    open_and_settle(qtbot, window, path)
    training, xy = window.training, window.views[0]
    controller = training.controller
    before = window.loader.shown("xy", "Probabilities")[0].copy()
    losing = [int(np.argmin(before[25, column])) + 1 for column in (20, 70)]  # where each class loses now
    training.panel.live.setChecked(True)
    training.panel.size.setValue(5)
    training.panel.paint.setChecked(True)
    trained: list[str] = []
    training.trained.connect(trained.append)
    training.panel.classes.button(losing[0]).setChecked(True)
    slot = window.loader.slots[("xy", "Probabilities")]
    assert slot.prefetch is not None  # the next slices, under the project's classifier
    drag(window, xy, 20, range(10, 41, 3))
    assert slot.prefetch is None  # dropped: a new classifier is coming
    qtbot.waitUntil(lambda: controller._training is not None, timeout=10_000)  # the first training runs
    training.panel.classes.button(losing[1]).setChecked(True)
    drag(window, xy, 70, range(10, 41, 3))  # outdates it
    qtbot.waitUntil(lambda: bool(trained), timeout=120_000)
    qtbot.waitUntil(window.loader.is_settled, timeout=120_000)
    controller.pool.submit(lambda: None).result(60)  # the training thread has nothing more to report
    labelled = int((controller.store.region(Roi.from_shape(window.document.source.spatial_shape)) > 0).sum())
    assert len(trained) == 1 and f"on {labelled} labelled voxels" in trained[0], trained
    shown = window.loader.shown("xy", "Probabilities")[0]
    for column, label in zip((20, 70), losing):
        assert before[25, column, label - 1] < 0.5 < shown[25, column, label - 1]  # now it wins where painted
    frozen = gc.get_freeze_count()
    assert frozen > 0  # the trainer's import kept what the process held out of collections
    window.close_document()  # then collects the closed project's garbage among it, and freezes the rest again
    qtbot.waitUntil(lambda: gc.get_freeze_count() != frozen, timeout=10_000)
