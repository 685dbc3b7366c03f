"""What the window shows after a lane switch and a class added, and thresholding's defaults: the tab the
user was in stays, the status bar names the lane, the views' legend lists a new class, and hysteresis seeds
and grows on the same class unless the project says otherwise (ilastik's defaults: both channel 0)."""

import pytest
from PyQt5 import QtCore, QtWidgets
from PyQt5.QtTest import QTest

from ilastik_desktop._qt.panels.lanes import add_images_dialog
from ilastik_desktop.runtime.demo import write_demo_project
from tests.gui.conftest import open_and_settle
from tests.gui.test_lanes import show_lane, write_image

pytestmark = pytest.mark.timeout(300)


def test_a_lane_switch_keeps_the_tab_and_names_the_lane_and_a_new_class_joins_the_legend(qtbot, window, tmp_path):
    folder = tmp_path / "demo"
    path = write_demo_project(str(folder), shape=(16, 48, 48), trees=10)
    image = write_image(str(folder / "second.h5"), (12, 40, 56), 3)
    open_and_settle(qtbot, window, path)
    threshold = window.threshold_panel.settings()
    assert threshold.core_channel == threshold.channel  # hysteresis on one class, as ilastik's defaults
    dialog = add_images_dialog(window, [image])
    QTest.mouseClick(dialog.findChild(QtWidgets.QDialogButtonBox).button(QtWidgets.QDialogButtonBox.Ok),
                     QtCore.Qt.LeftButton)
    combo = window.lane_switcher.combo
    qtbot.waitUntil(lambda: combo.count() == 2, timeout=30_000)
    thresholding = next(i for i in range(window.tabs.count()) if window.tabs.tabText(i) == "Thresholding")
    window.tabs.setCurrentIndex(thresholding)
    combo.setFocus()
    show_lane(qtbot, window, QtCore.Qt.Key_Down)
    assert window.tabs.currentIndex() == thresholding
    assert window.statusBar().currentMessage() == "showing lane 1: second"
    window.training.controller.add_class()
    assert "Label 3" in window.legend.text()
