"""The status bar describes the object under the real mouse (ID, size, mean intensity, bounding box) while the
Objects layer is visible; its features are computed off the GUI thread."""

import os
import threading

import numpy as np
import pytest
from PyQt5 import QtCore
from PyQt5.QtTest import QTest

from backend.compute.geometry import Roi
from backend.compute.object_features import block_stats
from backend.compute.threshold import ThresholdSettings
from backend.service.objects import request_frame
from ilastik_desktop.runtime.object_info import describe_object
from tests.gui.conftest import open_and_settle
from viewer.model import OBJECTS

pytestmark = pytest.mark.timeout(300)


def _at(view, row: int, col: int) -> QtCore.QPoint:
    point = view.mapFromScene(view.box.mapViewToScene(QtCore.QPointF(col + 0.5, row + 0.5)))
    return view.viewport().mapTo(view.window(), point)


def test_moving_the_mouse_over_an_object_shows_its_features(qtbot, window, data_dir):
    open_and_settle(qtbot, window, os.path.join(data_dir, "ilastik-timeseries", "mitocheckPixelClassification.ilp"))
    settings = ThresholdSettings(channel=1, core_channel=1, min_size=5)
    window.loader.set_threshold(settings)
    window.model.set_layer(OBJECTS, visible=True)
    qtbot.waitUntil(lambda: window.loader.is_complete("xy", OBJECTS), timeout=60_000)
    xy = window.views[0]
    plane = window.loader.slots[("xy", OBJECTS)].values.reshape(window.model.shape[2:])
    rows, cols = np.nonzero(plane)
    row, col = int(rows[len(rows) // 2]), int(cols[len(cols) // 2])
    object_id = int(plane[row, col])
    gateway = window.document.gateway
    labels = request_frame(gateway, 0, settings).result(timeout=60)[0, ..., 0]
    raw = gateway.source.read(Roi.from_shape((1,) + gateway.source.spatial_shape[1:]))[0]
    expected = describe_object(block_stats(labels, raw, (0, 0, 0)), object_id, volumetric=False)
    assert expected.startswith(f"object {object_id}: ") and " px, mean " in expected and "bbox x " in expected

    computing_threads = []
    original = window.object_line.info._compute
    window.object_line.info._compute = lambda *a: (computing_threads.append(threading.current_thread()),
                                                   original(*a))
    handle = window.windowHandle()

    def move_to(r: int, c: int) -> None:
        """Move the mouse there; sent again until the readout shows it (a move that follows another at once
        can be dropped before it reaches the view)."""
        def arrived() -> bool:
            if f"x {c}  y {r} " in window.cursor_label.text():
                return True
            QTest.mouseMove(handle, _at(xy, r, c))
            return False

        qtbot.waitUntil(arrived, timeout=10_000)

    move_to(row, col)
    qtbot.waitUntil(lambda: window.object_line.text() == expected, timeout=30_000)
    assert computing_threads and threading.main_thread() not in computing_threads

    background = np.argwhere(plane == 0)[0]
    move_to(int(background[0]), int(background[1]))
    assert window.object_line.text() == ""
    move_to(row, col)  # the frame's features are kept: at once
    assert window.object_line.text() == expected and len(computing_threads) == 1
    window.model.set_layer(OBJECTS, visible=False)
    move_to(row, col + 1)
    assert window.object_line.text() == ""
