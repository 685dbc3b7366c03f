"""Training latency: from a finished stroke to the visible xy overlay complete under the new classifier.

    python bench/training_latency.py [--shape 256,512,512] [--workers 2] [--dir bench/out]

Opens a demo-style project (11 features, 100 trees) in the real main window (offscreen, 1600 x 1000)
with embedded Redis and local workers, takes the brush, paints scripted strokes 50 ms apart in the xy view with live
training on, and measures the time from the last stroke to the xy view's probabilities complete under
the new classifier (this includes the pause live training waits for further strokes, `debounce_s`). Cold: the first
training after opening, which computes the features of every labelled block (the project's own labels
too); warm: later strokes, whose untouched label blocks come from the session's feature cache. The
longest gap between two ticks of a 10 ms timer on the GUI thread is reported as the event loop's
longest stall. Prints JSON and a table.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from PyQt5 import QtCore  # noqa: E402

from bench.common import report  # noqa: E402
from bench.viewer_latency import bench_window, wait_for, xy_done  # noqa: E402
from ilastik_desktop._qt.main_window import MainWindow  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class StallMeter:
    """The longest gap between ticks of a 10 ms timer on the GUI thread since :meth:`reset`."""

    def __init__(self) -> None:
        self.timer = QtCore.QTimer(interval=10)
        self.timer.timeout.connect(self._tick)
        self.reset()
        self.timer.start()

    def reset(self) -> None:
        """Start a new measurement."""
        self.last, self.longest = time.perf_counter(), 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        self.longest, self.last = max(self.longest, now - self.last), now


def strokes_and_time(app, window: MainWindow, meter: StallMeter, count: int, at: float, label: int) -> dict:
    """Paint ``count`` vertical strokes from the fraction ``at`` of the view's width with class ``label``;
    seconds from the last one to the xy overlay complete under the classifier trained from them, and the
    training's own report."""
    training, view = window.training, window.views[0]
    training.panel.classes.button(label).setChecked(True)
    messages: list[str] = []
    training.trained.connect(messages.append)
    rows, cols = view.shape
    meter.reset()
    for i in range(count):  # 50 ms apart, each its own event, as a user's strokes arrive
        if i:
            pause = time.perf_counter() + 0.05
            wait_for(app, lambda until=pause: time.perf_counter() > until)
        view.stroked.emit([(row, int(at * cols) + 6 * i) for row in range(rows // 4, rows // 4 + 40)])
    started = time.perf_counter()
    wait_for(app, lambda: bool(messages))
    trained = time.perf_counter() - started
    wait_for(app, lambda: window.loader.is_settled() and xy_done(window, "Probabilities"))
    total = time.perf_counter() - started
    training.trained.disconnect(messages.append)
    if not messages[0].startswith("trained"):
        raise RuntimeError(messages[0])
    return {"trained_s": round(trained, 3), "overlay_s": round(total, 3), "stall_ms": round(1000 * meter.longest),
            "report": messages[0]}


def session(app, window: MainWindow, meter: StallMeter, project: str, strokes: int) -> tuple[dict, dict]:
    """Open the project; a cold training from ``strokes`` strokes, then a warm one from as many."""
    window.open_project(project)
    wait_for(app, lambda: window.loader is not None and window.loader.is_settled() and xy_done(window, "Probabilities"))
    window.training.panel.size.setValue(9)
    window.training.panel.paint.setChecked(True)  # the brush, as a user takes it before painting
    cold = strokes_and_time(app, window, meter, strokes, 0.2, 1)
    warm = strokes_and_time(app, window, meter, strokes, 0.6, 2)
    window.close_document()
    return cold, warm


def main() -> None:
    rows = []
    with bench_window(__doc__.splitlines()[0]) as (a, project, app, window):
        meter = StallMeter()
        debounce_s = window.services.config.training.debounce_s
        for strokes in (1, 5):
            for features, result in zip(("cold", "warm"), session(app, window, meter, project, strokes)):
                rows.append({"features": features, "strokes": strokes, "stroke_to_overlay_s": result["overlay_s"],
                             "training_done_s": result["trained_s"], "longest_stall_ms": result["stall_ms"],
                             "training": result["report"]})
    report("training_latency", rows, {"shape_zyx": a.shape, "workers": a.workers, "features": 11, "trees": 100,
                                      "debounce_s": debounce_s, "target_warm_s": 1.0, "target_warm_5_strokes_s": 1.5,
                                      "target_cold_s": 2.0, "target_stall_ms": 50})

if __name__ == "__main__":
    main()
