"""Small things of daily use in the window (issue 24): a class just added is the one painted with, a refusal
in the Training tab goes once a later edit succeeds, the New project dialog says why axes do not fit, and a
damaged image is called damaged where the window reads images."""

import numpy as np
import pytest
from PyQt5 import QtCore, QtGui, QtWidgets

from ilastik_desktop._qt.panels.training import ERASER
from ilastik_desktop.runtime.demo import write_demo_project
from tests.gui.conftest import open_and_settle

pytestmark = pytest.mark.timeout(300)


def _button(panel: QtWidgets.QWidget, text: str) -> QtWidgets.QPushButton:
    return next(b for b in panel.findChildren(QtWidgets.QPushButton) if b.text() == text)


def _click(qtbot, widget: QtWidgets.QWidget) -> None:
    qtbot.mouseClick(widget, QtCore.Qt.LeftButton)


def _png_cut_off(folder) -> str:
    import imageio.v3 as iio

    iio.imwrite(folder / "whole.png", (np.random.default_rng(5).random((48, 48)) * 255).astype(np.uint8))
    data = (folder / "whole.png").read_bytes()
    (folder / "cut.png").write_bytes(data[:len(data) // 2])
    return str(folder / "cut.png")


def test_a_class_added_is_painted_with_and_refusals_go_with_the_next_edit(qtbot, window, tmp_path, monkeypatch):
    path = write_demo_project(str(tmp_path / "demo"), shape=(24, 64, 64), trees=10)
    open_and_settle(qtbot, window, path)
    panel = window.training.panel
    panel.live.setChecked(False)
    QtWidgets.QApplication.setActiveWindow(window)
    qtbot.keyClick(window, QtCore.Qt.Key_E)  # the eraser, painting
    assert panel.label() == ERASER and panel.paint.isChecked()
    _click(qtbot, _button(panel, "Rename"))
    assert panel.status.text() == "select a class first"

    _click(qtbot, _button(panel, "Add"))  # as ilastik: the new class is selected, with the brush
    assert window.document.project.label_names[-1] == "Label 3"
    assert panel.label() == 3 and panel.classes.button(3).isChecked() and panel.paint.isChecked()
    assert panel.status.text() == ""  # the refusal no longer applies
    qtbot.keyClick(window, QtCore.Qt.Key_N)
    qtbot.keyClick(window, QtCore.Qt.Key_A)  # the key does the same
    assert panel.label() == 4 and panel.paint.isChecked()

    first = window.document.project.label_names[0]
    names = iter([first, "Membrane"])
    monkeypatch.setattr(QtWidgets.QInputDialog, "getText", lambda *args, **kwargs: (next(names), True))
    _click(qtbot, _button(panel, "Rename"))  # class 4 called like class 1: refused
    assert panel.status.text() == f"another class is already called '{first}'"
    _click(qtbot, _button(panel, "Rename"))
    assert window.document.project.label_names[3] == "Membrane" and panel.status.text() == ""

    panel.classes.button(1).setChecked(True)
    monkeypatch.setattr(QtWidgets.QInputDialog, "getText", lambda *args, **kwargs: ("Membrane", True))
    _click(qtbot, _button(panel, "Rename"))
    assert panel.status.text() == "another class is already called 'Membrane'"
    monkeypatch.setattr(QtWidgets.QColorDialog, "getColor", lambda *args, **kwargs: QtGui.QColor(10, 200, 10))
    _click(qtbot, _button(panel, "Colour"))  # a recolouring clears it as well
    assert window.document.project.label_colors[0] == (10, 200, 10) and panel.status.text() == ""


def test_the_new_project_dialog_says_why_axes_do_not_fit(qtbot, window, tmp_path):
    np.save(tmp_path / "cells.npy", np.zeros((8, 32, 32), np.uint8))
    dialog = window.ask_new_project()
    dialog.set_image(str(tmp_path / "cells.npy"))
    assert dialog.axes.text() == "zyx" and dialog.message.text() == ""
    qtbot.keyClick(dialog.axes, QtCore.Qt.Key_End)
    qtbot.keyClicks(dialog.axes, "c")  # typed: told at once
    assert dialog.message.text() == "Axes: the image has 3 axes, 'zyxc' names 4 (one letter per axis)"
    assert "at most once" not in dialog.message.text()
    qtbot.keyClick(dialog.axes, QtCore.Qt.Key_Backspace)
    assert dialog.message.text() == ""
    qtbot.keyClick(dialog.axes, QtCore.Qt.Key_Backspace)
    qtbot.keyClicks(dialog.axes, "y")
    assert dialog.message.text() == "Axes: 'zyy' names y more than once (each of t, z, y, x, c at most once)"
    dialog.create()  # refused with the same reason, nothing written
    assert "axes 'zyy' do not fit: 'zyy' names y more than once" in dialog.message.text()
    assert not (tmp_path / "cells.ilp").exists()
    dialog.reject()


def test_a_damaged_png_is_called_damaged_in_the_window(qtbot, window, tmp_path):
    cut = _png_cut_off(tmp_path)
    dialog = window.ask_new_project()
    dialog.set_image(cut)
    assert dialog.message.text().startswith(f"{cut}: the file is damaged or incomplete (PNG: cut off at byte ")
    assert "pip install" not in dialog.message.text()
    dialog.reject()

    path = write_demo_project(str(tmp_path / "demo"), shape=(8, 48, 48), trees=5)
    with qtbot.waitSignal(window.failed, timeout=60_000) as failed:
        window.open_project(path, cut)  # the raw data located by the user is damaged
    assert failed.args[0].startswith(f"{cut}: the file is damaged or incomplete (PNG: "), failed.args[0]
