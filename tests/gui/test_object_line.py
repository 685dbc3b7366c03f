"""The status bar describes the object under the real mouse (ID, size, mean intensity, bounding box) while the
Objects layer is visible; its features are computed off the GUI thread."""

import os
import threading

import numpy as np
import pytest
from PyQt5 import QtCore, QtGui, QtWidgets
from PyQt5.QtTest import QTest

from backend.compute.geometry import Roi
from backend.compute.object_features import block_stats
from backend.compute.threshold import ThresholdSettings, threshold_frame
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
    status = f"{window.cursor_label.text()}   {window.object_line.text()}"
    assert status.count(f"object {object_id}") == 1  # the ID said once, by the object's line
    assert computing_threads and threading.main_thread() not in computing_threads

    background = np.argwhere(plane == 0)[0]
    move_to(int(background[0]), int(background[1]))
    assert window.object_line.text() == ""
    move_to(row, col)  # the frame's features are kept: at once
    assert window.object_line.text() == expected and len(computing_threads) == 1
    window.model.set_layer(OBJECTS, visible=False)
    move_to(row, col + 1)
    assert window.object_line.text() == ""


def _wheel(view, row: int, col: int, notches: int) -> None:
    """Turn the real mouse wheel over pixel (row, col) of ``view`` by ``notches`` notches (the mouse stays)."""
    at = view.mapFromScene(view.box.mapViewToScene(QtCore.QPointF(col + 0.5, row + 0.5)))
    for _ in range(notches):
        event = QtGui.QWheelEvent(QtCore.QPointF(at), QtCore.QPointF(view.viewport().mapToGlobal(at)),
                                  QtCore.QPoint(), QtCore.QPoint(0, 120), QtCore.Qt.NoButton, QtCore.Qt.NoModifier,
                                  QtCore.Qt.NoScrollPhase, False)
        QtWidgets.QApplication.sendEvent(view.viewport(), event)



def test_the_object_line_follows_the_wheel_to_another_frame_without_a_mouse_move(qtbot, window, data_dir,
                                                                                  monkeypatch):
    """The wheel steps to frame 4 while one far block of its labelling is held back: the block under the mouse
    is painted first, and the line says so without the mouse moving; the features follow once the frame is done."""
    monkeypatch.setattr("ilastik_desktop.runtime.document.default_block_shape", lambda shape: (1, 1, 48, 48))
    open_and_settle(qtbot, window, os.path.join(data_dir, "ilastik-timeseries", "mitocheckPixelClassification.ilp"))
    settings = ThresholdSettings(channel=1, core_channel=1, min_size=30)
    window.loader.set_threshold(settings)
    window.model.set_layer(OBJECTS, visible=True)
    qtbot.waitUntil(lambda: window.loader.is_complete("xy", OBJECTS), timeout=60_000)
    gateway = window.document.gateway
    frames = []
    for t in (0, 4):  # frame 4 labelled here, not through the gateway: the window labels it when it gets there
        frame = Roi((t, 0, 0, 0), (t + 1,) + gateway.source.spatial_shape[1:])
        frames.append(threshold_frame(gateway.request("Probabilities", frame).result(timeout=60)[0], settings)[0])
    rows, cols = np.nonzero((frames[0][48:, 48:] > 0) & (frames[1][48:, 48:] > 0))  # in both, off the held block
    row, col = 48 + int(rows[len(rows) // 2]), 48 + int(cols[len(cols) // 2])
    object_id = int(frames[1][row, col])
    raw = gateway.source.read(Roi((4, 0, 0, 0), (5,) + gateway.source.spatial_shape[1:]))[0]
    expected = describe_object(block_stats(frames[1][None], raw, (0, 0, 0)), object_id, volumetric=False)
    xy, handle = window.views[0], window.windowHandle()

    def arrived() -> bool:
        if f"x {col}  y {row} " in window.cursor_label.text():
            return True
        QTest.mouseMove(handle, _at(xy, row, col))
        return False

    qtbot.waitUntil(arrived, timeout=10_000)
    qtbot.waitUntil(lambda: window.object_line.text().startswith(f"object {int(frames[0][row, col])}: "),
                    timeout=30_000)
    release, reads = threading.Event(), []
    real_request = gateway.request

    def request(kind, roi, *args, **kwargs):
        """Frame 4's labelling: the second read (pass 2) of its first block waits until the test releases it."""
        if threading.current_thread().name.startswith("objects-block") and roi.start[0] == 4:
            reads.append(roi)
            if roi.start[2:] == (0, 0) and reads.count(roi) == 2:
                release.wait(120)
        return real_request(kind, roi, *args, **kwargs)

    monkeypatch.setattr(gateway, "request", request)
    try:
        for _ in range(4):
            _wheel(xy, row, col)
        qtbot.waitUntil(lambda: window.model.position[0] == 4, timeout=5_000)
        slot = window.loader.slots[("xy", OBJECTS)]

        def painted_at_4() -> bool:
            return slot.roi.start[0] == 4 and slot.painted is not None and slot.painted[row, col]

        qtbot.waitUntil(painted_at_4, timeout=30_000)
        assert not slot.complete  # the held block is not there yet
        qtbot.waitUntil(lambda: window.object_line.text() == f"object {object_id}: computing its features...",
                        timeout=10_000)
        assert f"x {col}  y {row}  t 4 " in window.cursor_label.text()
    finally:
        release.set()
    qtbot.waitUntil(lambda: window.object_line.text() == expected, timeout=30_000)


def _wheel(view, row: int, col: int) -> None:
    """Turn the real mouse wheel one notch up over pixel (row, col) of ``view`` (the mouse stays there)."""
    at = view.mapFromScene(view.box.mapViewToScene(QtCore.QPointF(col + 0.5, row + 0.5)))
    event = QtGui.QWheelEvent(QtCore.QPointF(at), QtCore.QPointF(view.viewport().mapToGlobal(at)), QtCore.QPoint(),
                              QtCore.QPoint(0, 120), QtCore.Qt.NoButton, QtCore.Qt.NoModifier,
                              QtCore.Qt.NoScrollPhase, False)
    QtWidgets.QApplication.sendEvent(view.viewport(), event)
