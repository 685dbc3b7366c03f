"""The export dialog for daily use: wide enough, a default name from the raw data actually shown, a missing
folder created, a busy bar until the total is known then counts from 0, time left shown, and quitting during an
export asks first."""

import dataclasses
import os
import shutil

import numpy as np
import pytest
from PyQt5 import QtCore, QtTest, QtWidgets

from tests.gui.conftest import open_and_settle
from tests.integration.test_executor import small_project
from tests.integration.test_faults import FEATURES

pytestmark = pytest.mark.timeout(300)


def test_default_name_from_the_raw_data_shown_and_a_missing_folder_is_created(qtbot, window, data_dir, tmp_path):
    api = os.path.join(data_dir, "ilastik-api")
    other = tmp_path / "other_volume.npy"
    shutil.copyfile(os.path.join(api, "Data_3D.npy"), other)
    open_and_settle(qtbot, window, os.path.join(api, "PixelClass3D.ilp"), str(other))
    dialog = window.open_export()
    assert dialog.minimumWidth() >= 720
    assert dialog.path.text() == os.path.join(api, "other_volume_{result_type}")
    dialog.format.setCurrentText("npy")
    dialog.path.setText(str(tmp_path / "new" / "folder" / "result"))
    with qtbot.waitSignal(dialog.export_done, timeout=120_000) as finished:
        dialog.start.click()
    assert finished.args[0] == str(tmp_path / "new" / "folder" / "result.npy"), finished.args[1]
    assert np.load(finished.args[0]).shape == (64, 64, 64, 2)
    dialog.started_at -= 10
    dialog.show_progress(5, 10)  # half done after 10 s
    assert "about 10 s left" in dialog.message.text()
    dialog.close()


def test_quitting_during_an_export_asks_and_no_keeps_it_running(qtbot, make_window, tmp_path):
    path, _ = small_project(tmp_path, shape=(64, 256, 256), selection=FEATURES)
    window = make_window(interactive=True)
    window.journal_policy = "keep"  # labels an earlier test painted on a shared project are not asked about
    open_and_settle(qtbot, window, path)
    dialog = window.open_export()
    dialog.format.setCurrentText("npy")
    dialog.source.setCurrentText("Features")
    dialog.path.setText(str(tmp_path / "out" / "features"))
    dialog.start.click()
    answers = []

    def answer(button):
        box = QtWidgets.QApplication.activeModalWidget()
        answers.append(box.text())
        box.button(button).click()

    QtCore.QTimer.singleShot(300, lambda: answer(QtWidgets.QMessageBox.No))
    window.close()
    assert answers == ["An export is running. Quit and discard it?"]
    assert window.isVisible() and dialog.running()
    QtCore.QTimer.singleShot(300, lambda: answer(QtWidgets.QMessageBox.Yes))
    window.close()
    assert not window.isVisible() and not dialog.running()
    assert not [n for n in os.listdir(tmp_path / "out")]  # the partial output removed


def test_the_bar_is_busy_until_the_total_is_known_then_counts_every_block_from_zero(qtbot, window, tmp_path):
    path, _ = small_project(tmp_path, shape=(16, 256, 256))
    open_and_settle(qtbot, window, path)
    dialog = window.open_export()
    dialog.path.setText(str(tmp_path / "out" / "probabilities"))
    shown = []
    show = dialog.show_progress

    def record(done, total):
        show(done, total)
        shown.append((dialog.progress.text(), dialog.message.text()))

    dialog.show_progress = record
    with qtbot.waitSignal(dialog.export_done, timeout=120_000) as finished:
        QtTest.QTest.mouseClick(dialog.start, QtCore.Qt.LeftButton)
        assert dialog.progress.maximum() == 0 and dialog.progress.text() == ""  # busy, not "0 / 100"
        assert dialog.message.text() == "starting ..."
    assert finished.args[0], finished.args[1]
    blocks = len(shown) - 1
    assert blocks == 4  # 16 x 256 x 256 in blocks of 64 x 128 x 128
    assert shown[0] == ("0 / 4", "exporting ...")  # the total before the first block
    assert [text for text, _ in shown] == [f"{i} / 4" for i in range(5)]
    dialog.close()


def choose_last(combo) -> None:
    """The combo box's last item chosen with the keyboard (End), as a user does."""
    combo.setFocus()
    QtTest.QTest.keyClick(combo, QtCore.Qt.Key_End)


def test_object_features_are_offered_as_csv_or_hdf5_and_counted_in_frames(qtbot, window, tmp_path):
    path, _ = small_project(tmp_path)
    open_and_settle(qtbot, window, path)
    dialog = window.open_export()
    qtbot.waitExposed(dialog)
    choose_last(dialog.source)
    assert dialog.source.currentText() == "Object Features"
    assert [dialog.format.itemText(i) for i in range(dialog.format.count())] == ["csv", "hdf5"]
    dialog.format.setFocus()
    QtTest.QTest.keyClick(dialog.format, QtCore.Qt.Key_Home)
    dialog.path.setText(str(tmp_path / "out" / "table"))
    with qtbot.waitSignal(dialog.export_done, timeout=120_000) as finished:
        QtTest.QTest.mouseClick(dialog.start, QtCore.Qt.LeftButton)
    assert finished.args[0] == str(tmp_path / "out" / "table.csv"), finished.args[1]
    assert finished.args[1].startswith(f"wrote {finished.args[0]} (1 frame, ")
    with open(finished.args[0]) as table:
        assert table.readline().startswith("object_id,timestep,labelimage_oid,")
    QtTest.QTest.keyClick(dialog.source, QtCore.Qt.Key_Home)  # back to an image source: the image formats
    assert "csv" not in [dialog.format.itemText(i) for i in range(dialog.format.count())]
    assert dialog.format.currentText() == "hdf5"
    dialog.close()


@pytest.mark.parametrize("source", ["Objects", "Object Features"])
def test_a_refused_graph_cut_projects_message_is_shown_whole_above_the_buttons(qtbot, window, tmp_path, source):
    path, _ = small_project(tmp_path)
    open_and_settle(qtbot, window, path)
    dialog = window.open_export()
    qtbot.waitExposed(dialog)
    dialog.threshold = dataclasses.replace(dialog.threshold, method=2)  # a project saved with graph cut
    dialog.source.setCurrentText(source)
    dialog.path.setText(str(tmp_path / "out" / "objects"))
    with qtbot.waitSignal(dialog.export_done, timeout=60_000) as finished:
        QtTest.QTest.mouseClick(dialog.start, QtCore.Qt.LeftButton)
    assert finished.args[0] == "" and "graph-cut thresholding" in finished.args[1]
    message = dialog.message

    def fits() -> bool:
        return (message.height() >= message.heightForWidth(message.width())
                and message.geometry().bottom() < dialog.start.geometry().top())

    qtbot.waitUntil(fits, timeout=5_000)
    assert message.heightForWidth(message.width()) > message.fontMetrics().height()  # several lines
    dialog.close()


def test_the_dialog_reopens_with_the_source_and_format_chosen_last(qtbot, window, tmp_path):
    path, _ = small_project(tmp_path)
    open_and_settle(qtbot, window, path)
    dialog = window.open_export()
    qtbot.waitExposed(dialog)
    assert dialog.source.currentText() == "Probabilities"
    dialog.source.setFocus()
    QtTest.QTest.keyClick(dialog.source, QtCore.Qt.Key_Down)  # the next source
    chosen = dialog.source.currentText()
    dialog.format.setFocus()
    QtTest.QTest.keyClick(dialog.format, QtCore.Qt.Key_End)  # the last format
    fmt = dialog.format.currentText()
    assert (chosen, fmt) != ("Probabilities", "hdf5")
    dialog.close()
    again = window.open_export()
    assert again is not dialog and (again.source.currentText(), again.format.currentText()) == (chosen, fmt)
    again.close()
