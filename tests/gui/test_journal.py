"""Unsaved labels in the window: quitting asks Save / Discard / Cancel (a failed save keeps the window), and
labels journalled by a session that ended without saving are offered back when the project opens again."""

import os

import numpy as np
import pytest

from backend.compute.geometry import Roi
from backend.io.label_journal_format import find_journal
from backend.io.project import open_project
from backend.io.training import label_blocks
from backend.private_files import config_dir
from backend.service.labels import LabelStore
from ilastik_desktop.runtime.demo import write_demo_project
from tests.gui.conftest import BoxAnswers, open_and_settle

pytestmark = pytest.mark.timeout(300)


def everything(window) -> np.ndarray:
    return window.training.controller.store.region(Roi.from_shape(window.document.source.spatial_shape))


def saved_labels(path: str, source) -> np.ndarray:
    store = LabelStore.from_blocks(source.spatial_shape, label_blocks(open_project(path), source))
    return store.region(Roi.from_shape(source.spatial_shape))


def paint(window, label: int, column: int) -> None:
    window.training.panel.classes.button(label).setChecked(True)
    window.training.panel.size.setValue(5)
    window.views[0].stroked.emit([(row, column) for row in range(10, 50, 3)])


@pytest.fixture
def demo(tmp_path):
    return write_demo_project(str(tmp_path / "demo"), shape=(48, 96, 96), trees=10)


def painted_window(qtbot, new_window, path, interactive=True):
    window = new_window(interactive=interactive)
    open_and_settle(qtbot, window, path)
    window.training.panel.live.setChecked(False)
    paint(window, 1, 20)
    assert window.training.controller.journal.wait_written(10)
    return window


def test_quit_asks_save_discard_or_cancel_and_a_failed_save_does_not_quit(qtbot, new_window, demo):
    window = painted_window(qtbot, new_window, demo)
    painted = everything(window)
    journal = demo + ".journal"
    assert find_journal(demo, config_dir()).path == journal

    answers = BoxAnswers("Cancel")
    assert not window.close()
    assert answers.texts == ["Labels, classes or thresholds are unsaved. Save them before quitting?"]
    assert window.isVisible() and window.training.controller.dirty and os.path.exists(journal)

    hidden = demo + ".away"
    os.rename(demo, hidden)  # the save cannot read the project: it fails
    answers = BoxAnswers("Save", "OK")
    assert not window.close()
    qtbot.waitUntil(lambda: len(answers.texts) == 2, timeout=60_000)
    assert answers.texts[1].startswith(f"The labels were not saved: {demo}: could not save the project")
    assert window.isVisible() and window.training.controller.dirty and os.path.exists(journal)

    os.rename(hidden, demo)
    answers = BoxAnswers("Save")
    assert not window.close()  # not yet: once saved
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=60_000)
    assert not os.path.exists(journal)  # saved: nothing left to restore
    reopened = new_window()
    open_and_settle(qtbot, reopened, demo)
    assert np.array_equal(everything(reopened), painted) and painted.any()


def test_discarding_on_quit_discards_the_journal_too(qtbot, new_window, demo):
    saved = open(demo, "rb").read()
    window = painted_window(qtbot, new_window, demo)
    answers = BoxAnswers("Discard")
    assert window.close() and not window.isVisible()
    assert len(answers.texts) == 1
    qtbot.waitUntil(lambda: not os.path.exists(demo + ".journal"), timeout=10_000)
    assert open(demo, "rb").read() == saved


def test_opening_another_project_over_unsaved_labels_asks_too(qtbot, new_window, demo, data_dir):
    window = painted_window(qtbot, new_window, demo)
    painted, source = everything(window), window.document.source
    other = os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp")
    answers = BoxAnswers("Cancel")
    window.open_project(other)
    assert answers.texts == ["Labels, classes or thresholds are unsaved. Save them before opening another project?"]
    assert window.document.project.path == demo  # kept
    answers = BoxAnswers("Save")
    with qtbot.waitSignal(window.opened, timeout=60_000):
        window.open_project(other)  # saved first, then opened
    assert window.document.project.path == other and not os.path.exists(demo + ".journal")
    assert np.array_equal(saved_labels(demo, source), painted)


def test_labels_and_classes_left_unsaved_are_offered_back_and_restored(qtbot, new_window, demo):
    first = painted_window(qtbot, new_window, demo, interactive=False)
    controller = first.training.controller
    saved_names = controller.names
    controller.add_class()
    controller.rename_class(3, "membranes")
    controller.recolour_class(3, (1, 2, 3))
    paint(first, 3, 60)
    paint(first, 0, 20)  # the eraser takes part of the first stroke back
    assert controller.journal.wait_written(10)
    painted, names, colors = everything(first), controller.names, controller.colors
    assert (painted == 3).any() and not np.array_equal(painted, saved_labels(demo, first.document.source))
    first.close()  # not asked (not interactive): the journal stays, as after a crash

    answers = BoxAnswers("Discard")
    window = new_window(interactive=True)
    open_and_settle(qtbot, window, demo)
    assert answers.texts[0].startswith("Labels painted in demo.ilp were not saved before ilastik-desktop ended")
    assert answers.texts[0].endswith("Restore them?")
    assert np.array_equal(everything(window), saved_labels(demo, window.document.source))
    assert window.training.controller.names == saved_names
    qtbot.waitUntil(lambda: find_journal(demo, config_dir()) is None, timeout=10_000)

    # the same again, restored this time
    first = painted_window(qtbot, new_window, demo, interactive=False)
    first.training.controller.add_class()
    first.training.controller.rename_class(3, "membranes")
    first.training.controller.recolour_class(3, (1, 2, 3))
    paint(first, 3, 60)
    paint(first, 0, 20)
    assert first.training.controller.journal.wait_written(10)
    first.close()
    answers = BoxAnswers("Restore")
    window = new_window(interactive=True)
    open_and_settle(qtbot, window, demo)
    assert len(answers.texts) == 1
    restored = window.training.controller
    assert np.array_equal(everything(window), painted) and restored.dirty
    assert restored.names == names and restored.colors == colors
    assert [b.text() for b in window.training.panel.classes.buttons()][1:] == names
    assert window.views[0].buffers["Labels"][30, 60, 3] > 0  # shown
    assert restored.journal.wait_written(10)
    journal = find_journal(demo, config_dir())  # journalled again: a second crash loses nothing either
    assert journal.belongs_to(demo) and journal.classes == (names, colors)
    assert journal.blocks
    for (_, index), labels in journal.blocks.items():
        held = restored.store.blocks.get(index)
        assert np.array_equal(labels, held) if labels is not None else held is None or not held.any()
    window.interactive = False  # closed after the test as after a crash: its journal stays


def test_a_journal_of_a_project_saved_elsewhere_since_is_not_applied_blindly(qtbot, new_window, demo):
    first = painted_window(qtbot, new_window, demo, interactive=False)
    painted = everything(first)
    first.close()
    os.utime(demo, ns=(1, 1))  # saved by another program meanwhile
    window = new_window(interactive=False)
    window.journal_policy = "restore"
    open_and_settle(qtbot, window, demo)
    assert np.array_equal(everything(window), saved_labels(demo, window.document.source))  # not applied unasked
    assert not np.array_equal(painted, everything(window))
    assert "were not restored: the project was saved elsewhere since" in window.training.panel.status.text()
    assert find_journal(demo, config_dir()) is not None  # and not thrown away
    window.close()

    answers = BoxAnswers("Restore anyway")
    window = new_window(interactive=True)
    open_and_settle(qtbot, window, demo)
    assert "was saved or changed elsewhere since they were painted" in answers.texts[0]
    assert np.array_equal(everything(window), painted)
    assert window.training.controller.journal.wait_written(10)
    assert find_journal(demo, config_dir()).belongs_to(demo)  # journalled over the project as it is now
    window.interactive = False  # closed after the test as after a crash: its journal stays


def test_a_threshold_changed_and_not_saved_is_asked_about_on_quit(qtbot, new_window, demo):
    window = new_window(interactive=True)
    open_and_settle(qtbot, window, demo)
    assert not window.training.controller.dirty
    panel = window.threshold_panel
    panel.low.setValue(0.35)
    panel.low.editingFinished.emit()  # Enter in the field
    answers = BoxAnswers("Cancel")
    assert not window.close()
    assert answers.texts == ["Labels, classes or thresholds are unsaved. Save them before quitting?"]
    answers = BoxAnswers("Save")
    assert not window.close()  # not yet: once saved
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=60_000)
    assert open_project(demo).threshold.low == pytest.approx(0.35)
