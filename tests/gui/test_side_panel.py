"""The side panel keeps the width the user gave it when another project opens, collapses, and never crushes
the views (it used to grow to 1100 px on opening another project, leaving the views 69 px wide)."""

import os

import pytest
from PyQt5 import QtCore, QtWidgets

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
