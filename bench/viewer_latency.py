"""Viewer latency: how fast the window shows raw data and fills the visible xy overlay.

    python bench/viewer_latency.py [--shape 256,512,512] [--workers 2] [--dir bench/out]

Builds a demo-style project (the demo's 11 features, 100 trees) on a 256 x 512 x 512 volume, opens
it in the real main window (offscreen, 1600 x 1000) with embedded Redis and local workers, and
measures: first raw tile after opening, the visible xy overlay complete with a cold cache and with
a warm one (reopened), after moving 1 and 10 slices straight away, and after moving 1 slice once the
user paused for a second (the prefetch had time). Prints JSON and a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PyQt5 import QtCore, QtWidgets  # noqa: E402

from bench.common import report  # noqa: E402
from ilastik_desktop._qt.main_window import MainWindow  # noqa: E402
from ilastik_desktop.runtime.demo import write_demo_project  # noqa: E402
from ilastik_desktop.runtime.services import Services  # noqa: E402
from ilastik_desktop.runtime.settings import ComputeSettings  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def wait_for(app: QtWidgets.QApplication, condition, timeout: float = 600.0) -> float:
    """Run the event loop until ``condition()``; seconds it took.

    The loop sleeps between events as the application's does (a 2 ms tick bounds the measuring
    error); spinning instead would starve the I/O threads of the interpreter lock.
    """
    tick = QtCore.QTimer(interval=2)
    tick.start()
    started = time.perf_counter()
    try:
        while not condition():
            if time.perf_counter() - started > timeout:
                raise TimeoutError("the viewer did not get there in time")
            app.processEvents(QtCore.QEventLoop.AllEvents | QtCore.QEventLoop.WaitForMoreEvents)
    finally:
        tick.stop()
    return time.perf_counter() - started


def xy_done(window: MainWindow, kind: str) -> bool:
    """True when the xy view's layer of ``kind`` is complete."""
    return window.loader is not None and window.loader.is_complete("xy", kind)


def open_and_time(app, window: MainWindow, project: str) -> dict:
    """Open the project; seconds to the first raw tile and to the complete xy overlay."""
    window.open_project(project)
    raw = wait_for(app, lambda: xy_done(window, "Raw"))
    overlay = wait_for(app, lambda: xy_done(window, "Probabilities")) + raw
    return {"raw_s": round(raw, 3), "overlay_s": round(overlay, 3)}


def move_and_time(app, window: MainWindow, slices: int) -> float:
    """Move ``slices`` along z; seconds until the xy overlay is complete again."""
    started = time.perf_counter()
    window.loader.step("z", slices)
    window.loader.refresh()
    wait_for(app, lambda: xy_done(window, "Probabilities"))
    return round(time.perf_counter() - started, 3)


@contextmanager
def bench_window(description: str) -> Iterator[tuple[argparse.Namespace, str, QtWidgets.QApplication, MainWindow]]:
    """Parse ``--shape``, ``--workers`` and ``--dir``, write the demo-style project once, and yield the
    arguments, the project, the application and a shown 1600 x 1000 window with workers running."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--shape", default="256,512,512", help="z,y,x of the volume")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default=os.path.join(HERE, "out"))
    a = ap.parse_args()
    a.shape = tuple(int(v) for v in a.shape.split(","))
    folder = os.path.join(a.dir, "viewer_" + "x".join(map(str, a.shape)))
    project = os.path.join(folder, "demo.ilp")
    if not os.path.exists(project):
        project = write_demo_project(folder, a.shape)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    settings = QtCore.QSettings(os.path.join(folder, "settings.ini"), QtCore.QSettings.IniFormat)
    with Services(ComputeSettings(workers=a.workers, cache_mb=2048)) as services:
        services.wait_for_workers()
        window = MainWindow(services, settings, interactive=False)
        window.resize(1600, 1000)
        window.show()
        yield a, project, app, window
        window.close()


def main() -> None:
    with bench_window(__doc__.splitlines()[0]) as (a, project, app, window):
        shape = a.shape
        cold = open_and_time(app, window, project)
        wait_for(app, window.loader.is_settled)
        window.close_document()
        warm = open_and_time(app, window, project)
        wait_for(app, window.loader.is_settled)
        one = move_and_time(app, window, 1)
        ten = move_and_time(app, window, 10)
        pause = time.perf_counter() + 1.0
        wait_for(app, lambda: time.perf_counter() > pause)  # the user looks at the slice; prefetch runs
        paused = move_and_time(app, window, 1)
    rows = [{"measure": "first raw tile after open (cold)", "seconds": cold["raw_s"], "target_s": 0.5},
            {"measure": "visible xy overlay complete, cold cache", "seconds": cold["overlay_s"], "target_s": 3.0},
            {"measure": "visible xy overlay complete, warm cache", "seconds": warm["overlay_s"], "target_s": 0.2},
            {"measure": "overlay complete after moving 1 slice", "seconds": one, "target_s": None},
            {"measure": "overlay complete after moving 10 slices", "seconds": ten, "target_s": None},
            {"measure": "moving 1 slice after a 1 s pause (prefetched)", "seconds": paused, "target_s": None}]
    report("viewer_latency", rows, {"shape_zyx": shape, "workers": a.workers, "features": 11,
                                    "xy_view_pixels": shape[1] * shape[2]})


if __name__ == "__main__":
    main()
