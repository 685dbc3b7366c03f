"""Keyboard and Help for daily use: time steps and layer toggles from the keyboard, the wheel steps time
on 2D+t data, a shortcut sheet, About with versions and licences, the README reachable."""

import html
import os
import sys

import pytest
from PyQt5 import QtCore, QtGui, QtWidgets

from ilastik_desktop._qt import menus
from ilastik_desktop._qt.menus import about_text, key_text, licence_path, licences, readme_path, shortcut_rows
from ilastik_desktop.runtime import frozen
from tests.gui.conftest import open_and_settle

pytestmark = pytest.mark.timeout(300)


def _activate(window) -> None:
    """Keyboard shortcuts go to the active window (offscreen, only the first one shown becomes active)."""
    QtWidgets.QApplication.setActiveWindow(window)
    assert QtWidgets.QApplication.activeWindow() is window


def _action(window, menu_title: str, text: str) -> QtWidgets.QAction:
    menu = next(a.menu() for a in window.menuBar().actions() if a.text().replace("&", "") == menu_title)
    return next(a for a in menu.actions() if a.text().replace("&", "") == text)


def test_time_steps_by_keyboard_and_wheel_on_2d_plus_t_data(qtbot, window, data_dir):
    series = os.path.join(data_dir, "ilastik-timeseries", "mitocheckPixelClassification.ilp")
    open_and_settle(qtbot, window, series)
    _activate(window)
    assert window.model.position[0] == 0
    qtbot.keyClick(window, QtCore.Qt.Key_Right, QtCore.Qt.AltModifier)
    qtbot.keyClick(window, QtCore.Qt.Key_Right, QtCore.Qt.AltModifier)
    assert window.model.position[0] == 2 and window.time_slider.value() == 2
    qtbot.keyClick(window, QtCore.Qt.Key_Left, QtCore.Qt.AltModifier)
    assert window.model.position[0] == 1
    window.views[0].slice_step.emit(3)  # the mouse wheel over the only (xy) view
    assert window.model.position[0] == 4 and window.time_slider.value() == 4
    qtbot.waitUntil(window.loader.is_settled, timeout=60_000)
    assert window.loader.shown("xy", "Probabilities")[1].start[0] == 4


def test_layers_toggle_from_the_keyboard_and_the_panel_follows(qtbot, window, data_dir):
    open_and_settle(qtbot, window, os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp"))
    _activate(window)
    first = window.model.layers[1]
    before = first.visible
    qtbot.keyClick(window, QtCore.Qt.Key_2, QtCore.Qt.ControlModifier)
    assert window.model.layer(first.name).visible is (not before)
    assert window.layers_panel.checks[first.name].isChecked() is (not before)


def test_help_menu_lists_shortcuts_about_with_licences_and_the_readme(qtbot, window):
    for text in ("Keyboard shortcuts", "Read me", "About ilastik-desktop"):
        assert _action(window, "Help", text).isEnabled()
    assert _action(window, "Help", "Keyboard shortcuts").shortcut().toString() == "F1"
    names = {name: licence for name, _, licence in licences()}
    assert {"numpy", "PyQt5", "scikit-learn"} <= set(names) and all(names.values())
    assert "GPL" in names["PyQt5"] and "MIT licence" not in about_text()
    licence = licence_path()
    assert "free software under the GNU General Public License, version 3 or later (GPL-3.0-or-later)" in about_text()
    assert f"its text is in {licence}." in about_text() and os.path.basename(licence) == "LICENSE"
    with open(licence) as f:
        assert f.read().startswith(" " * 20 + "GNU GENERAL PUBLIC LICENSE\n" + " " * 23 + "Version 3, 29 June 2007")
    assert readme_path().endswith("README.md") and os.path.exists(readme_path())
    assert _action(window, "View", "Side panel").shortcut().toString() == "F9"


def _every_key(window) -> set[str]:
    """Every key sequence the window answers to: its actions', its shortcuts', its buttons'."""
    keys = {key_text(k) for action in window.findChildren(QtWidgets.QAction) for k in action.shortcuts()}
    keys |= {key_text(s.key()) for s in window.findChildren(QtWidgets.QShortcut) if s.isEnabled()}
    keys |= {key_text(b.shortcut()) for b in window.findChildren(QtWidgets.QAbstractButton) if b.window() is window}
    return keys - {""}


def test_f1_lists_every_shortcut_the_window_has(qtbot, window, data_dir, monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(QtWidgets.QMessageBox, "information", lambda parent, title, text: shown.append(text))
    _activate(window)
    qtbot.keyClick(window, QtCore.Qt.Key_F1)
    assert len(shown) == 1
    for listed in ("<b>Ctrl+N</b></td><td>&nbsp;&nbsp;File &gt; New project", "<b>Ctrl+O</b>", "<b>F1</b>",
                   "<b>F9</b>", "<b>Ctrl+0</b>", "<b>Alt+Right</b>", "<b>Ctrl+1 ... Ctrl+9</b>",
                   "<b>1 ... 9</b></td><td>&nbsp;&nbsp;paint with class 1 to 9", "<b>B</b>", "<b>E</b>", "<b>A</b>",
                   "Up / Down, mouse wheel"):  # ilastik's keys also before a project is open
        assert listed in shown[0], listed
    assert _every_key(window) <= {key for keys, _ in shortcut_rows(window) for key in keys}

    open_and_settle(qtbot, window, os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp"))
    _activate(window)
    qtbot.keyClick(window, QtCore.Qt.Key_F1)
    rows = shortcut_rows(window)
    keys = [key for keys, _ in rows for key in keys]
    assert _every_key(window) <= set(keys) and len(keys) == len(set(keys))  # each once, the panel's too
    assert {key_text(QtGui.QKeySequence(QtGui.QKeySequence.Undo)), "L", ",", "."} <= set(keys)
    assert all(f"<b>{html.escape(keys[0])}" in shown[1] for keys, _ in rows)


@pytest.mark.parametrize("installed", ["wheel", "bundle", "nowhere"])
def test_the_licence_is_found_where_the_wheel_and_the_bundle_put_it(installed, tmp_path, monkeypatch):
    """Outside a source checkout: ``<prefix>/share/ilastik-desktop/LICENSE`` of the wheel, the bundle's
    resources, or else the About box names the licence's web page."""
    no_checkout = tmp_path / "site-packages"
    no_checkout.mkdir()
    for module in (menus, frozen):
        monkeypatch.setattr(module, "checkout_folder", lambda: str(no_checkout))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    monkeypatch.setattr("site.getuserbase", lambda: str(tmp_path / "userbase"))
    folder = {"wheel": tmp_path / "prefix" / "share" / "ilastik-desktop",
              "bundle": tmp_path / "_internal" / "resources", "nowhere": tmp_path / "elsewhere"}[installed]
    if installed == "bundle":
        monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path / "_internal"), raising=False)
    folder.mkdir(parents=True)
    (folder / "LICENSE").write_text("GNU GENERAL PUBLIC LICENSE\n")
    expected = None if installed == "nowhere" else str(folder / "LICENSE")
    assert licence_path() == expected
    assert "(GPL-3.0-or-later)" in about_text()
    assert (f"its text is in {expected}." if expected else "https://www.gnu.org/licenses/gpl-3.0.html") in about_text()


def test_ilastiks_labeling_keys_work_anywhere_in_the_window(qtbot, window, data_dir):
    open_and_settle(qtbot, window, os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp"))
    window.tabs.setCurrentIndex(0)  # not the Training tab: the keys work all the same
    _activate(window)
    panel, views = window.training.panel, window.views
    qtbot.keyClick(window, QtCore.Qt.Key_2)
    qtbot.keyClick(window, QtCore.Qt.Key_B)
    assert panel.label() == 2 and all(view.painting for view in views)
    qtbot.keyClick(window, QtCore.Qt.Key_E)
    assert panel.label() == 0 and panel.paint.isChecked()
    qtbot.keyClick(window, QtCore.Qt.Key_B)
    assert panel.label() == 2  # back to the class painted before the eraser
    qtbot.keyClick(window, QtCore.Qt.Key_N)
    assert not any(view.painting for view in views)
    assert panel.size.value() == 3
    qtbot.keyClick(window, QtCore.Qt.Key_Period)
    qtbot.keyClick(window, QtCore.Qt.Key_Period)
    assert panel.size.value() == 7  # ilastik's sizes 1, 3, 5, 7, 11, 23, 31, 61
    qtbot.keyClick(window, QtCore.Qt.Key_Comma)
    assert panel.size.value() == 5
    live = panel.live.isChecked()
    qtbot.keyClick(window, QtCore.Qt.Key_L)
    assert panel.live.isChecked() is (not live)
    classes = len(window.document.project.label_names)
    qtbot.keyClick(window, QtCore.Qt.Key_A)
    assert len(window.document.project.label_names) == classes + 1
