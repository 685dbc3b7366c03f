"""Acceptance: a window killed with SIGKILL after painting loses nothing. A child process builds the real
window offscreen, paints with mouse clicks and adds and renames a class, says "painted" once its journal
holds the records; it is killed -9; nothing of it stays running; the project opened again in a window of
this process offers the labels back, and Restore gives exactly what the child painted."""

import json
import os
import signal
import subprocess
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import pytest  # noqa: E402
from PyQt5 import QtCore  # noqa: E402

from backend.compute.geometry import Roi  # noqa: E402
from ilastik_desktop._qt.main_window import MainWindow  # noqa: E402
from ilastik_desktop.runtime.demo import write_demo_project  # noqa: E402
from ilastik_desktop.runtime.services import Services  # noqa: E402
from ilastik_desktop.runtime.settings import ComputeSettings  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.gui.test_journal import BoxAnswers  # noqa: E402
from tests.helpers import wait_for  # noqa: E402

pytestmark = pytest.mark.timeout(600)

CHILD = r"""
import json, os, sys, time
import numpy as np
from PyQt5 import QtCore, QtTest, QtWidgets
from backend.compute.geometry import Roi
from ilastik_desktop._qt.main_window import MainWindow
from ilastik_desktop.runtime.services import Services
from ilastik_desktop.runtime.settings import ComputeSettings

project, folder = sys.argv[1], sys.argv[2]
app = QtWidgets.QApplication([])


def wait(predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        app.processEvents(QtCore.QEventLoop.AllEvents, 20)


services = Services(ComputeSettings(workers=1, cache_mb=64, config_dir=os.path.join(folder, "config")))
settings = QtCore.QSettings(os.path.join(folder, "child.ini"), QtCore.QSettings.IniFormat)
window = MainWindow(services, settings, interactive=False)
window.resize(1000, 700)
window.show()
window.open_project(project)
wait(lambda: window.training is not None and window.loader.is_settled())
training = window.training
controller = training.controller
training.panel.live.setChecked(False)
training.panel.paint.setChecked(True)
training.panel.size.setValue(7)
controller.add_class()
controller.rename_class(3, "membranes")
view = window.views[0]
for label, points in ((1, [(20, 20), (24, 30), (28, 40)]), (3, [(60, 70), (62, 74)]), (2, [(80, 15)])):
    training.panel.classes.button(label).setChecked(True)
    for row, col in points:  # a dab of the brush per click
        scene = view.box.mapViewToScene(QtCore.QPointF(col + 0.5, row + 0.5))
        QtTest.QTest.mouseClick(view.viewport(), QtCore.Qt.LeftButton, pos=view.mapFromScene(scene))
        app.processEvents()
assert controller.journal.wait_written(30)
everything = Roi.from_shape(window.document.source.spatial_shape)
np.save(os.path.join(folder, "painted.npy"), controller.store.region(everything))
print(json.dumps({"names": controller.names, "colors": controller.colors}), flush=True)
print("painted", flush=True)
app.exec_()
"""


def test_labels_painted_in_a_window_killed_with_sigkill_are_offered_back_and_equal(qtbot, tmp_path):
    project = write_demo_project(str(tmp_path / "demo"), shape=(48, 96, 96), trees=10)
    saved = open(project, "rb").read()
    env = dict(os.environ, PYTHONPATH=REPO, QT_QPA_PLATFORM="offscreen",
               ILASTIK_DESKTOP_CONFIG_DIR=str(tmp_path / "config"))
    with open(tmp_path / "child.err", "wb") as errors:
        child = subprocess.Popen([sys.executable, "-c", CHILD, project, str(tmp_path)], stdout=subprocess.PIPE,
                                 stderr=errors, env=env, text=True)
        try:
            lines = [child.stdout.readline().strip() for _ in range(2)]
            assert lines[1] == "painted", (lines, (tmp_path / "child.err").read_text()[-3000:])
            descendants = psutil.Process(child.pid).children(recursive=True)
            assert descendants  # its worker and redis-server, which must end with it
            child.send_signal(signal.SIGKILL)
            assert child.wait(30) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
            child.stdout.close()
    wait_for(lambda: not [p for p in descendants if _running(p)], 30,
             message=lambda: f"still running: {[p.pid for p in descendants if _running(p)]}")
    classes = json.loads(lines[0])
    painted = np.load(tmp_path / "painted.npy")
    assert (painted == 3).any() and open(project, "rb").read() == saved  # nothing was saved

    config = str(tmp_path / "parent-config")
    settings = QtCore.QSettings(str(tmp_path / "parent.ini"), QtCore.QSettings.IniFormat)
    with Services(ComputeSettings(workers=1, cache_mb=64, config_dir=config)) as services:
        window = MainWindow(services, settings, interactive=True)
        qtbot.addWidget(window)
        window.show()
        try:
            answers = BoxAnswers("Restore")
            with qtbot.waitSignal(window.opened, timeout=120_000):
                window.open_project(project)
            qtbot.waitUntil(lambda: bool(answers.texts), timeout=10_000)
            assert answers.texts[0].startswith("Labels painted in demo.ilp were not saved before ilastik-desktop ended")
            assert answers.texts[0].endswith("Restore them?")  # the journal belongs to the project as it is
            controller = window.training.controller
            restored = controller.store.region(Roi.from_shape(window.document.source.spatial_shape))
            assert np.array_equal(restored, painted)
            assert controller.names == classes["names"] and controller.colors == [tuple(c) for c in classes["colors"]]
            assert controller.dirty
        finally:
            window.interactive = False  # closed without asking: the journal stays for the next opening
            window.close()


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
