"""The brush with real mouse events (press, moves with the button held, release) in the window: the labels
overlay shows the stroke while it is painted, the line between the mouse's points has no gap, Ctrl+Z takes
the whole stroke back, and live training starts once per stroke, after the release; on the three orthoviews
of a 3D project, on a 2D project and on a time step of a 2D+t project."""

import os

import numpy as np
import pytest
from PyQt5 import QtCore, QtWidgets
from PyQt5.QtTest import QTest
from scipy import ndimage

from backend.compute.geometry import Roi
from ilastik_desktop.runtime.demo import write_demo_project
from tests.gui.conftest import open_and_settle
from viewer.model import LABELS
from viewer.slicing import plane_roi

pytestmark = pytest.mark.timeout(300)
LEFT, NO_KEYS = QtCore.Qt.LeftButton, QtCore.Qt.NoModifier


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_project(str(tmp_path_factory.mktemp("brush") / "demo"), shape=(48, 96, 96), trees=10)


def at(view, row: int, col: int) -> QtCore.QPoint:
    """The point of the window over the centre of the view's pixel (``row``, ``col``)."""
    point = view.mapFromScene(view.box.mapViewToScene(QtCore.QPointF(col + 0.5, row + 0.5)))
    return view.viewport().mapTo(view.window(), point)


def shown(view) -> np.ndarray:
    """Where the view's labels overlay, as its image item holds it, shows a label."""
    return view.overlays[LABELS].image[..., 3] > 0


def on_segments(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The pixels the polyline through ``points`` passes through."""
    return sorted({(round(r0 + t * (r1 - r0)), round(c0 + t * (c1 - c0)))
                   for (r0, c0), (r1, c1) in zip(points, points[1:]) for t in np.linspace(0, 1, 400)})


def take_brush(window, size: int = 3, label: int = 1) -> None:
    panel = window.training.panel
    panel.live.setChecked(False)
    panel.classes.button(label).setChecked(True)
    panel.size.setValue(size)
    panel.paint.setChecked(True)


def drag(qtbot, view, points: list[tuple[int, int]], midway=None) -> None:
    """Press on the first point, move through the others with the button held, release on the last; ``midway``
    (if given) runs after the first move, before the release."""
    handle = view.window().windowHandle()
    QTest.mousePress(handle, LEFT, NO_KEYS, at(view, *points[0]))
    for n, point in enumerate(points[1:]):
        QTest.mouseMove(handle, at(view, *point))
        if n == 0 and midway is not None:
            midway()
    QTest.mouseRelease(handle, LEFT, NO_KEYS, at(view, *points[-1]))
    qtbot.waitUntil(lambda: all(shown(view)[p] for p in on_segments(points)), timeout=5_000)


def undo_by_keyboard(qtbot, window) -> None:
    window.tabs.setCurrentIndex(0)  # the Project tab: the Undo button is hidden, its key works all the same
    QtWidgets.QApplication.setActiveWindow(window)
    qtbot.keyClick(window, QtCore.Qt.Key_Z, QtCore.Qt.ControlModifier)


def in_plane(window, view) -> Roi:
    """The voxels (tzyx) of the plane ``view`` shows."""
    rows, cols = view.shape
    return plane_roi(tuple(window.model.position), view.rows_axis, view.cols_axis, (0, rows, 0, cols))


def plane_labels(window, view) -> np.ndarray:
    """The labels of the plane ``view`` shows, as (rows, columns) of the view."""
    labels = window.training.controller.store.region(in_plane(window, view)).squeeze()
    return labels if "tzyx".index(view.rows_axis) < "tzyx".index(view.cols_axis) else labels.T


def check_stroke(qtbot, window, view, points: list[tuple[int, int]]) -> None:
    """Drag through ``points`` (far apart: a fast drag) with class 1; the stroke shows while painted, without
    gaps, and Ctrl+Z takes it all back."""
    store = window.training.controller.store
    everything = Roi.from_shape(store.grid.image.shape)
    before, shown_before = store.region(everything), shown(view)
    between = tuple(int(v) for v in (np.array(points[0]) + points[1]) // 2)
    later = tuple(int(v) for v in (np.array(points[-2]) + points[-1]) // 2)  # on the last segment

    def while_painting():  # between the first two mouse events, before the release; the rest not yet
        qtbot.waitUntil(lambda: shown(view)[between], timeout=5_000)
        assert plane_labels(window, view)[between] == 1 and shown(view)[later] == shown_before[later]

    drag(qtbot, view, points, while_painting)
    line = on_segments(points)
    assert all(shown(view)[p] for p in line), "the overlay shows a gap between the mouse's points"
    pieces, _ = ndimage.label(plane_labels(window, view) == 1)
    assert len({pieces[p] for p in line}) == 1 and pieces[line[0]], "the line is in one piece"
    changed = store.region(everything) != before
    assert changed.any()
    changed[in_plane(window, view).slices()] = False
    assert not changed.any(), "only the view's plane was painted"
    undo_by_keyboard(qtbot, window)
    qtbot.waitUntil(lambda: np.array_equal(shown(view), shown_before), timeout=5_000)
    assert np.array_equal(store.region(everything), before), "one Ctrl+Z took the whole stroke back"


@pytest.mark.parametrize("plane", ["xy", "xz", "yz"])
def test_a_drag_paints_live_without_gaps_and_ctrl_z_takes_it_back(qtbot, window, demo, plane):
    open_and_settle(qtbot, window, demo)
    take_brush(window)
    view = next(v for v in window.views if v.plane == plane)
    rows, cols = view.shape
    points = [(2, 3), (rows // 2, cols - 5), (rows - 3, cols // 3), (rows - 10, 4)]
    check_stroke(qtbot, window, view, points)


def test_a_stroke_shows_in_the_other_views_while_painted_and_trains_once_after_release(qtbot, window, demo):
    open_and_settle(qtbot, window, demo)
    take_brush(window, size=5)
    window.training.panel.live.setChecked(True)
    controller = window.training.controller
    wanted, trained = [], []
    controller.training_wanted.connect(lambda: wanted.append(1))
    controller.trained.connect(trained.append)
    _, z, y, x = window.model.position
    xy, xz = window.views[0], next(v for v in window.views if v.plane == "xz")
    points = [(y - 20, x - 30), (y + 20, x - 10)] + [(y + 20 - 4 * i, x + 3 * i) for i in range(1, 10)]
    handle = window.windowHandle()
    QTest.mousePress(handle, LEFT, NO_KEYS, at(xy, *points[0]))
    for point in points[1:]:
        QTest.mouseMove(handle, at(xy, *point))
    crossing = x - 20  # where the first segment crosses the crosshair's row: the xz view shows it at row z
    qtbot.waitUntil(lambda: shown(xz)[z, crossing - 1:crossing + 2].any(), timeout=5_000)
    assert not wanted and not controller.dirty, "nothing asks for training before the release"
    QTest.mouseRelease(handle, LEFT, NO_KEYS, at(xy, *points[-1]))
    assert len(wanted) == 1 and controller.dirty
    qtbot.waitUntil(lambda: bool(trained), timeout=120_000)
    assert trained[0].startswith("trained") and len(wanted) == 1


def test_the_brush_on_a_2d_image(qtbot, window, data_dir):
    open_and_settle(qtbot, window, os.path.join(data_dir, "ilastik-api", "PixelClass.ilp"))
    assert [v.plane for v in window.views] == ["xy"]
    take_brush(window)
    check_stroke(qtbot, window, window.views[0], [(5, 5), (120, 60), (10, 122)])


def test_the_brush_on_a_time_step_of_2d_plus_t_data(qtbot, window, data_dir):
    open_and_settle(qtbot, window, os.path.join(data_dir, "ilastik-timeseries", "mitocheckPixelClassification.ilp"))
    window.time_slider.setValue(2)
    assert window.model.position[0] == 2
    take_brush(window)
    check_stroke(qtbot, window, window.views[0], [(3, 4), (90, 50), (20, 95)])
