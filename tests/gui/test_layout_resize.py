"""Resizing the window and dragging the side panel's edge with each tab shown, before and after opening
projects, with workers present, lost and none (issue 24: the app died with SIGSEGV whenever the Workers tab
was visible and its size changed: every project opened wrapped the same workers panel in one more scroll
area, and the areas resized it back and forth until the stack overflowed)."""

import os

import pytest
from PyQt5 import QtCore, QtGui, QtTest, QtWidgets

from tests.gui.conftest import open_and_settle

pytestmark = pytest.mark.timeout(600)

SIZES = ((1200, 800), (1400, 900), (1100, 700))


def workers_areas(window) -> list[QtWidgets.QScrollArea]:
    """The scroll areas that manage the workers panel (more than one resize it against each other)."""
    return [area for area in window.findChildren(QtWidgets.QScrollArea) if area.widget() is window.workers_panel]


def tab_areas(window) -> list[QtWidgets.QWidget]:
    """Every page the tab widget holds, shown in a tab or left behind."""
    stack = window.tabs.findChild(QtWidgets.QStackedWidget)
    return stack.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly)


def click_tab(qtbot, window, index: int) -> None:
    bar = window.tabs.tabBar()
    QtTest.QTest.mouseClick(bar, QtCore.Qt.LeftButton, QtCore.Qt.NoModifier, bar.tabRect(index).center())
    qtbot.waitUntil(lambda: window.tabs.currentIndex() == index and window.tabs.currentWidget().isVisible(),
                    timeout=5_000)


def drag_side_edge(qtbot, window, dx: int) -> None:
    """Drag the separator between the side panel and the views by ``dx`` pixels, as a user does."""
    side = window.side
    qtbot.waitUntil(lambda: side.geometry().right() < window.centralWidget().geometry().left(), timeout=5_000)
    before = side.width()
    gap = window.style().pixelMetric(QtWidgets.QStyle.PM_DockWidgetSeparatorExtent, None, window)
    start = QtCore.QPoint(side.geometry().right() + 1 + gap // 2, side.geometry().center().y())
    QtTest.QTest.mousePress(window, QtCore.Qt.LeftButton, QtCore.Qt.NoModifier, start)
    for step in range(1, 5):  # QMainWindow applies a separator move on its next timer turn: wait for each
        at = start + QtCore.QPoint(dx * step // 4, 0)
        move = QtGui.QMouseEvent(QtCore.QEvent.MouseMove, QtCore.QPointF(at), QtCore.Qt.LeftButton,
                                 QtCore.Qt.LeftButton, QtCore.Qt.NoModifier)
        QtWidgets.QApplication.sendEvent(window, move)
        qtbot.waitUntil(lambda s=step: abs(side.width() - (before + dx * s // 4)) <= 3, timeout=5_000)
    QtTest.QTest.mouseRelease(window, QtCore.Qt.LeftButton, QtCore.Qt.NoModifier, start + QtCore.QPoint(dx, 0))


def shake(qtbot, window) -> None:
    """Each tab in turn: the window resized, the side panel's edge dragged, a status poll shown."""
    for index in range(window.tabs.count()):
        click_tab(qtbot, window, index)
        for width, height in SIZES:
            window.resize(width, height)
            qtbot.waitUntil(lambda w=width, h=height: window.size() == QtCore.QSize(w, h), timeout=5_000)
        drag_side_edge(qtbot, window, -80)
        drag_side_edge(qtbot, window, 80)
        with qtbot.waitSignal(window.status_timer.timeout, timeout=10_000):  # the table refilled meanwhile
            pass


def opened(qtbot, window, path: str, raw: str | None = None) -> None:
    """Open a project without waiting for its views to complete (there may be no worker to complete them)."""
    with qtbot.waitSignal(window.opened, timeout=60_000):
        window.open_project(path, raw)


def test_resizing_with_each_tab_shown_after_opening_projects_once_and_twice(qtbot, window, data_dir):
    window.resize(1400, 900)
    shake(qtbot, window)  # no project: the Workers tab alone
    seed = os.path.join(data_dir, "seed")
    for path, raw in ((os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp"), None),
                      (os.path.join(seed, "pc.ilp"), os.path.join(seed, "raw.h5/exported_data"))):
        open_and_settle(qtbot, window, path, raw)
        assert len(workers_areas(window)) == 1  # two were the crash
        qtbot.waitUntil(lambda: len(tab_areas(window)) == window.tabs.count(), timeout=5_000)  # none left over
        shake(qtbot, window)
    assert window.tabs.tabText(window.tabs.count() - 1) == "Workers" and window.views[0].isVisible()


def test_resizing_with_no_worker_alive_and_the_last_remote_worker_lost(qtbot, window, services, data_dir):
    from tests.integration.workers import free_port, kill_worker, start_worker, wait_listening

    panel = window.workers_panel
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    worker = start_worker("--listen", endpoint)
    try:
        open_and_settle(qtbot, window, os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp"))
        services.set_local_workers(0)
        qtbot.waitUntil(lambda: panel.summary.text().startswith("no workers"), timeout=30_000)
        opened(qtbot, window, os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp"))  # twice, no worker
        shake(qtbot, window)  # none alive
        wait_listening(endpoint)
        services.add_remote_worker(endpoint, None)
        qtbot.waitUntil(lambda: panel.summary.text().startswith("workers: 1 (1 process)"), timeout=30_000)
        shake(qtbot, window)  # one remote worker
        kill_worker(worker)
        qtbot.waitUntil(lambda: panel.summary.text().startswith("no workers") and any(
            "lost" in (panel.table.item(r, 4).text()) for r in range(panel.table.rowCount())), timeout=30_000)
        shake(qtbot, window)  # the last remote worker lost, no local process
        assert len(workers_areas(window)) == 1
    finally:
        kill_worker(worker)
        services.remove_remote_worker(endpoint)
        services.set_local_workers(2)
        services.wait_for_workers(timeout=60)
