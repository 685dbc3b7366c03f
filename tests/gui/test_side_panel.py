"""The side panel keeps the width the user gave it when another project opens and between sessions, collapses,
never crushes the views (it used to grow to 1100 px on opening another project, leaving the views 69 px wide),
and shows every tab and every control of the Layers tab at the default window sizes."""

import os

import pytest
from PyQt5 import QtCore, QtTest, QtWidgets

from ilastik_desktop._qt.main_window import MainWindow
from tests.gui.conftest import open_and_settle

pytestmark = pytest.mark.timeout(300)


def test_the_side_panel_keeps_its_width_collapses_and_leaves_the_views_room(qtbot, window, data_dir):
    api = os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp")
    seed = os.path.join(data_dir, "seed")
    open_and_settle(qtbot, window, api)
    side = window.findChild(QtWidgets.QDockWidget, "side")
    window.resizeDocks([side], [300], QtCore.Qt.Horizontal)  # as a user drags its edge
    qtbot.waitUntil(lambda: abs(side.width() - 300) <= 10, timeout=5_000)
    for project, raw in ((os.path.join(seed, "pc.ilp"), os.path.join(seed, "raw.h5/exported_data")), (api, None)):
        open_and_settle(qtbot, window, project, raw)
        qtbot.waitUntil(lambda: abs(side.width() - 300) <= 10, timeout=5_000)  # it grew to 1100 px before
        assert min(view.width() for view in window.views) >= 160
    side.toggleViewAction().trigger()  # View > Side panel (F9): collapsed
    qtbot.waitUntil(lambda: not side.isVisible(), timeout=5_000)
    open_and_settle(qtbot, window, os.path.join(seed, "pc.ilp"), os.path.join(seed, "raw.h5/exported_data"))
    assert not side.isVisible() and window.views[0].width() > 900  # the view takes the room
    side.toggleViewAction().trigger()
    qtbot.waitUntil(lambda: side.isVisible() and abs(side.width() - 300) <= 30, timeout=5_000)


@pytest.mark.parametrize("size", [(1200, 800), (1600, 1000)])  # the tests' and the app's default window sizes
def test_every_tab_and_every_layers_control_shows_at_the_default_size(qtbot, make_window, data_dir, size):
    window = make_window()
    window.resize(*size)
    open_and_settle(qtbot, window, os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp"))
    bar = window.tabs.tabBar()
    qtbot.waitUntil(lambda: window.side.width() >= 480, timeout=5_000)  # 360 px hid the Workers tab
    assert not any(button.isVisible() for button in bar.findChildren(QtWidgets.QToolButton))  # no scroll arrows
    assert window.tabs.tabText(window.tabs.count() - 1) == "Workers"
    assert bar.sizeHint().width() <= bar.width()  # every title whole (none shortened)
    assert all(bar.tabRect(index).right() < bar.width() for index in range(bar.count()))
    layers = window.tabs.indexOf(window.layers_panel.parentWidget().parentWidget())
    QtTest.QTest.mouseClick(bar, QtCore.Qt.LeftButton, QtCore.Qt.NoModifier, bar.tabRect(layers).center())
    area = window.tabs.currentWidget()
    qtbot.waitUntil(lambda: window.layers_panel.isVisible(), timeout=5_000)
    assert not area.horizontalScrollBar().isVisible()
    def clipped() -> list[str]:  # the panel may scroll down, never sideways
        width = area.viewport().width()
        return [w.text() for w in window.layers_panel.findChildren(QtWidgets.QAbstractButton) if w.isVisible()
                and not 0 <= w.mapTo(area.viewport(), QtCore.QPoint(0, 0)).x() <= width - w.width()]

    qtbot.waitUntil(lambda: clipped() == [], timeout=5_000)  # the layer arrows and the range's Reset were cut off


def test_the_side_panel_width_is_remembered_for_the_next_session(qtbot, make_window, settings):
    first = make_window()
    first.resizeDocks([first.side], [430], QtCore.Qt.Horizontal)  # as a user drags its edge
    qtbot.waitUntil(lambda: abs(first.side.width() - 430) <= 5, timeout=5_000)
    first.close()
    settings.sync()  # as when the app exits
    again = MainWindow(first.services, QtCore.QSettings(settings.fileName(), QtCore.QSettings.IniFormat),
                       interactive=False)
    qtbot.addWidget(again)
    again.resize(1200, 800)
    again.show()
    try:
        qtbot.waitUntil(lambda: abs(again.side.width() - 430) <= 5, timeout=5_000)
    finally:
        again.close()
