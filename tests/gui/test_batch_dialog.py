"""File > Batch processing in the window: the dialog driven through its widgets (real clicks on Start and
Cancel) writes the same files as the command line's batch, reports a corrupt file and skips it, and its
cancel removes the partial output of the file being written."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PyQt5 import QtCore, QtTest

from tests.gui.conftest import open_and_settle
from tests.integration.test_batch import NICKNAMES, export, output_name, read_outputs, write_batch_inputs
from tests.integration.test_executor import small_project
from tests.integration.test_faults import FEATURES

pytestmark = pytest.mark.timeout(300)


def batch_dialog(qtbot, window):
    """The dialog, opened through File > Batch processing... (the menu action triggered)."""
    file_menu = window.menuBar().actions()[0].menu()
    action = next(a for a in file_menu.actions() if a.text() == "&Batch processing...")
    action.trigger()
    dialog = window.batch_dialog
    qtbot.waitExposed(dialog)
    return dialog


def click(button) -> None:
    """A real left click in the middle of ``button``."""
    QtTest.QTest.mouseClick(button, QtCore.Qt.LeftButton, pos=button.rect().center())


def test_the_window_batch_writes_the_command_lines_files_and_skips_a_corrupt_one(qtbot, window, tmp_path):
    project, image = small_project(tmp_path)
    inputs = tmp_path / "inputs"
    specs = write_batch_inputs(str(inputs), image)
    open_and_settle(qtbot, window, project)
    dialog = batch_dialog(qtbot, window)
    dialog.add_files([str(inputs / "cells_*.tif"), specs[2], specs[3]])  # a pattern, as the command line takes
    dialog.format.setCurrentText("npy")
    dialog.pattern.setText(str(tmp_path / "window" / "{nickname}_{result_type}"))
    with qtbot.waitSignal(dialog.batch_done, timeout=180_000) as done:
        click(dialog.start)
    summary = done.args[0]
    assert dialog.specs() == [str(inputs / n) for n in ("cells_a.tif", "cells_b.tif", "cells_broken.tif",
                                                          "cells_e.tif")] + specs[2:4]
    assert dialog.status(2).startswith("failed: ") and "cells_broken.tif" in dialog.status(2)
    assert all(dialog.status(row).startswith("wrote ") for row in (0, 1, 3, 4, 5))
    assert dialog.overall.value() == dialog.overall.maximum() == 6
    assert dialog.message.text() == summary.line and summary.line.startswith("batch: 5 of 6 files written, 1 failed")
    window_files = read_outputs(tmp_path / "window")
    assert list(window_files) == [output_name(n) for n in NICKNAMES]

    code, _ = export(project, tmp_path / "cli", *specs)
    assert code == 0
    command_line = read_outputs(tmp_path / "cli")
    assert list(command_line) == list(window_files)
    for name, values in window_files.items():
        assert values.dtype == command_line[name].dtype and np.array_equal(values, command_line[name]), name


def test_cancel_stops_the_batch_and_removes_the_partial_output(qtbot, window, tmp_path):
    project, image = small_project(tmp_path, shape=(64, 256, 256), selection=FEATURES)
    small, large, last = tmp_path / "small.npy", tmp_path / "large.npy", tmp_path / "last.npy"
    np.save(small, image[:8, :64, :64])
    np.save(last, image[:8, :64, :64])
    np.save(large, np.concatenate([image, image[:, :, ::-1]], axis=2))  # 8 blocks of 9 features
    open_and_settle(qtbot, window, project)
    dialog = batch_dialog(qtbot, window)
    dialog.add_files([str(small), str(large), str(last)])
    dialog.format.setCurrentText("npy")
    out = tmp_path / "out"
    dialog.pattern.setText(str(out / "{nickname}_{result_type}"))
    click(dialog.start)
    qtbot.waitUntil(lambda: dialog.status(1) == "exporting ..." and dialog.file_progress.value() >= 1,
                    timeout=120_000)
    assert ".large_Probabilities.npy.partial" in os.listdir(out)  # the large file's partial output
    with qtbot.waitSignal(dialog.batch_done, timeout=60_000) as done:
        click(dialog.stop)
    assert [o.status for o in done.args[0].outcomes] == ["written", "cancelled", "not started"]
    assert os.listdir(out) == ["small_Probabilities.npy"]
    assert dialog.status(1).startswith("cancelled") and dialog.status(2).startswith("not started")
    assert dialog.start.isEnabled() and not dialog.stop.isEnabled()


def test_closing_the_window_ends_a_running_batch_and_removes_its_partial_output(qtbot, make_window, tmp_path):
    project, image = small_project(tmp_path, shape=(64, 256, 256), selection=FEATURES)
    large = tmp_path / "large.npy"
    np.save(large, np.concatenate([image, image[:, :, ::-1]], axis=2))
    window = make_window()
    open_and_settle(qtbot, window, project)
    dialog = batch_dialog(qtbot, window)
    dialog.add_files([str(large)])
    out = tmp_path / "out"
    dialog.pattern.setText(str(out / "{nickname}_{result_type}"))
    click(dialog.start)
    qtbot.waitUntil(lambda: dialog.file_progress.value() >= 1, timeout=60_000)
    assert ".large_Probabilities.h5.partial" in os.listdir(out)
    window.close()
    assert not dialog.running() and os.listdir(out) == []



def test_object_features_are_offered_as_csv_or_hdf5_and_each_file_counted_in_frames(qtbot, window, tmp_path):
    project, image = small_project(tmp_path)
    np.save(tmp_path / "cells.npy", image[:8])
    open_and_settle(qtbot, window, project)
    dialog = batch_dialog(qtbot, window)
    dialog.add_files([str(tmp_path / "cells.npy")])
    dialog.source.setFocus()
    QtTest.QTest.keyClick(dialog.source, QtCore.Qt.Key_End)
    assert dialog.source.currentText() == "Object Features"
    assert [dialog.format.itemText(i) for i in range(dialog.format.count())] == ["csv", "hdf5"]
    dialog.format.setCurrentText("csv")
    dialog.pattern.setText(str(tmp_path / "out" / "{nickname}_{result_type}"))
    with qtbot.waitSignal(dialog.batch_done, timeout=120_000):
        click(dialog.start)
    written = str(tmp_path / "out" / "cells_Object_Features.csv")
    assert dialog.status(0).startswith(f"wrote {written} (1 frame, "), dialog.status(0)
    assert dialog.file_progress.text().endswith("frames")
