"""The Raw layer's checkbox, Ctrl+1 and opacity slider change the raw image on screen like every other
layer's (they changed nothing before)."""

import os

import numpy as np
import pytest
from PyQt5 import QtCore, QtGui, QtTest, QtWidgets

from tests.gui.conftest import open_and_settle

pytestmark = pytest.mark.timeout(300)


def pixels(view) -> np.ndarray:
    """What the view shows, as an (rows, cols, 4) array."""
    image = view.grab().toImage().convertToFormat(QtGui.QImage.Format_RGB32)
    bits = image.constBits()
    bits.setsize(image.sizeInBytes())
    return np.frombuffer(bits, np.uint8).reshape(image.height(), image.bytesPerLine() // 4, 4).copy()


def click_tab(window, title: str) -> None:
    bar = window.tabs.tabBar()
    index = next(i for i in range(bar.count()) if bar.tabText(i) == title)
    QtTest.QTest.mouseClick(bar, QtCore.Qt.LeftButton, QtCore.Qt.NoModifier, bar.tabRect(index).center())


def test_raw_visibility_and_opacity_change_the_view(qtbot, window, data_dir):
    open_and_settle(qtbot, window, os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp"))
    view, panel = window.views[0], window.layers_panel
    shown = pixels(view)
    click_tab(window, "Layers")
    qtbot.waitUntil(panel.checks["Raw"].isVisible, timeout=5_000)
    box = panel.checks["Raw"]
    QtTest.QTest.mouseClick(box, QtCore.Qt.LeftButton, QtCore.Qt.NoModifier, QtCore.QPoint(8, box.height() // 2))
    assert not window.model.layer("Raw").visible
    qtbot.waitUntil(lambda: not view.raw.isVisible(), timeout=5_000)
    hidden = pixels(view)
    assert np.abs(hidden.astype(int) - shown).sum() > 0  # the raw data left the screen
    QtWidgets.QApplication.setActiveWindow(window)  # shortcuts go to the active window
    QtTest.QTest.keyClick(window, QtCore.Qt.Key_1, QtCore.Qt.ControlModifier)  # Ctrl+1: back on
    qtbot.waitUntil(lambda: view.raw.isVisible() and panel.checks["Raw"].isChecked(), timeout=5_000)
    assert np.array_equal(pixels(view), shown)
    panel.sliders["Raw"].setFocus()
    for _ in range(7):  # 100 % -> 30 %, by keyboard
        QtTest.QTest.keyClick(panel.sliders["Raw"], QtCore.Qt.Key_PageDown)
    assert window.model.layer("Raw").opacity == pytest.approx(0.3)
    qtbot.waitUntil(lambda: all(v.raw.opacity() == pytest.approx(0.3) for v in window.views), timeout=5_000)
    faded = pixels(view)
    assert faded.astype(int)[..., :3].sum() < shown.astype(int)[..., :3].sum()  # fainter over the dark background
