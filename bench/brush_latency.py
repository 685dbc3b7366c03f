"""Brush latency: what one mouse move costs the GUI thread while painting a stroke in the real window.

    python bench/brush_latency.py [--shape 64,512,512] [--workers 2] [--dir bench/out] [--size 20] [--moves 300]
                                  [--step 12]

Opens the demo-style project in the real main window (offscreen, 1600 x 1000), takes the brush (live
training off: this measures painting alone) and drags it over the 512 x 512 xy view with real mouse events
through the window (press, moves with the left button held, release): a zigzag of ``--moves`` moves,
``--step`` image pixels apart, brush size ``--size``. Per move, the time from sending the event until the
event loop has nothing left to do: the swept segment written into the label store, the touched rectangle
of the labels overlay recoloured in every view it crosses, the overlay images uploaded and the views
repainted. Also timed: the release (one undo step, the full repaint of every view's labels) and the Ctrl+Z
taking the stroke back. Prints JSON and a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PyQt5 import QtCore, QtWidgets  # noqa: E402
from PyQt5.QtTest import QTest  # noqa: E402

from backend.compute.geometry import Roi  # noqa: E402
from bench.common import report  # noqa: E402
from bench.viewer_latency import bench_window, wait_for, xy_done  # noqa: E402

LEFT, NO_KEYS = QtCore.Qt.LeftButton, QtCore.Qt.NoModifier


def window_point(view, row: float, col: float) -> QtCore.QPoint:
    """The point of the window over the view's image pixel (``row``, ``col``)."""
    point = view.mapFromScene(view.box.mapViewToScene(QtCore.QPointF(col + 0.5, row + 0.5)))
    return view.viewport().mapTo(view.window(), point)


def zigzag(rows: int, cols: int, moves: int, step: int) -> list[tuple[int, int]]:
    """``moves`` points ``step`` pixels apart, sweeping right and left across the plane, moving down."""
    points, row, col, direction = [], rows // 10, cols // 10, 1
    for _ in range(moves):
        col += direction * step
        if not cols // 10 <= col <= cols - cols // 10:
            direction, col, row = -direction, col - 2 * direction * step, row + step
        points.append((row % rows, col))
    return points


def timed(app: QtWidgets.QApplication, action) -> tuple[float, float, float]:
    """Seconds from ``action()`` until the event loop has no more events to handle: wall clock, CPU time of
    the GUI thread (what it costs, without the waits for a core of a busy machine), and the part of that CPU
    time spent in ``action()`` itself (for a move: the event handled, the stroke painted into the store and
    the overlays' buffers; the rest is their upload and the views' repaint)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    action()
    handled = time.thread_time() - cpu
    for _ in range(3):  # and what each round posted: the overlays' upload, the views' repaint
        app.processEvents()
    return time.perf_counter() - wall, time.thread_time() - cpu, handled


def summary(measure: str, seconds: list[float]) -> dict:
    """Median, 95th percentile and maximum of ``seconds``, in milliseconds."""
    ms = sorted(1000 * s for s in seconds)
    return {"measure": measure, "median_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[int(0.95 * len(ms))], 2), "max_ms": round(ms[-1], 2), "count": len(ms)}


def main() -> None:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--size", type=int, default=20)
    ap.add_argument("--moves", type=int, default=300)
    ap.add_argument("--step", type=int, default=12)
    ours, rest = ap.parse_known_args()
    sys.argv[1:] = rest + (["--shape", "64,512,512"] if "--shape" not in rest else [])
    with bench_window(__doc__.splitlines()[0]) as (a, project, app, window):
        window.open_project(project)
        wait_for(app, lambda: window.loader is not None and window.loader.is_settled()
                 and xy_done(window, "Probabilities"))  # nothing else computes while the brush is timed
        panel, view, handle = window.training.panel, window.views[0], window.windowHandle()
        panel.live.setChecked(False)
        panel.size.setValue(ours.size)
        panel.paint.setChecked(True)
        points = zigzag(*view.shape, ours.moves, ours.step)
        store = window.training.controller.store
        everything = Roi.from_shape(store.grid.image.shape)
        before = store.region(everything)
        QTest.mousePress(handle, LEFT, NO_KEYS, window_point(view, *points[0]))
        app.processEvents()
        moves = [timed(app, lambda p=p: QTest.mouseMove(handle, window_point(view, *p))) for p in points[1:]]
        release = timed(app, lambda: QTest.mouseRelease(handle, LEFT, NO_KEYS, window_point(view, *points[-1])))
        QtWidgets.QApplication.setActiveWindow(window)
        painted = int((store.region(everything) != before).sum())
        undo = timed(app, lambda: QTest.keyClick(window, QtCore.Qt.Key_Z, QtCore.Qt.ControlModifier))
        if not (store.region(everything) == before).all():
            raise RuntimeError("Ctrl+Z did not take the stroke back")
        window.close_document()
    rows = [summary("mouse move while painting, wall", [m[0] for m in moves]),
            summary("mouse move while painting, GUI thread CPU", [m[1] for m in moves]),
            summary("  of which painting store and overlay buffers", [m[2] for m in moves]),
            summary("release: stroke ends, every view repainted, wall", [release[0]]),
            summary("Ctrl+Z: the stroke taken back, wall", [undo[0]])]
    report("brush_latency", rows, {"load_average_1min": os.getloadavg()[0], "shape_zyx": a.shape,
                                   "view": list(view.shape), "brush_size": ours.size, "step_px": ours.step,
                                   "voxels_painted": painted})


if __name__ == "__main__":
    main()
