"""The window's first overlay as a user sees it: start the app's services and window, open a project at once,
and print (JSON) the seconds from the start to the complete visible xy overlay. Run by ``bench/first_run.py``
with an installed package first on PYTHONPATH (this module adds no path of its own).

    python -m bench.first_window PROJECT [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main() -> None:
    """Time the window from the start of its services to the complete xy overlay of the project."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("project")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    started = time.perf_counter()
    from PyQt5 import QtCore, QtWidgets

    from ilastik_desktop._qt.main_window import MainWindow
    from ilastik_desktop.runtime.services import Services
    from ilastik_desktop.runtime.settings import ComputeSettings

    app = QtWidgets.QApplication([])
    with tempfile.TemporaryDirectory() as folder, Services(ComputeSettings(workers=a.workers, cache_mb=512)) as s:
        settings = QtCore.QSettings(os.path.join(folder, "settings.ini"), QtCore.QSettings.IniFormat)
        window = MainWindow(s, settings, interactive=False)
        window.resize(1600, 1000)
        window.show()
        window.open_project(a.project)
        while not (window.loader is not None and window.loader.is_complete("xy", "Probabilities")):
            app.processEvents(QtCore.QEventLoop.AllEvents, 2)
            time.sleep(0.002)
        print(json.dumps({"overlay_s": round(time.perf_counter() - started, 2)}), flush=True)
        window.close()


if __name__ == "__main__":
    main()
