"""GUI tests run offscreen unless a platform was chosen explicitly; shared window fixtures."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PyQt5 import QtCore, QtTest, QtWidgets  # noqa: E402

from backend.config import Config  # noqa: E402
from ilastik_desktop._qt.main_window import MainWindow  # noqa: E402
from ilastik_desktop.runtime.services import Services  # noqa: E402
from ilastik_desktop.runtime.settings import ComputeSettings  # noqa: E402


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    config = str(tmp_path_factory.mktemp("config"))
    fast = Config().replace(executor__heartbeat_s=0.5, worker__heartbeat_s=0.5)
    with Services(ComputeSettings(workers=2, cache_mb=256, config=fast, enable_remote=True,
                                  config_dir=config)) as running:
        running.wait_for_workers(timeout=60)
        yield running


@pytest.fixture
def settings(tmp_path):
    """The window's QSettings, in a file of this test's own."""
    return QtCore.QSettings(str(tmp_path / "settings.ini"), QtCore.QSettings.IniFormat)


@pytest.fixture
def make_window(qtbot, services, settings):
    """Make shown main windows (closed after the test); interactive ones ask the user in dialogs."""
    windows = []

    def make(interactive: bool = False) -> MainWindow:
        win = MainWindow(services, settings, interactive=interactive)
        qtbot.addWidget(win)
        win.resize(1200, 800)
        win.show()
        windows.append(win)
        return win

    yield make
    for win in windows:
        win.close()


@pytest.fixture
def window(make_window):
    return make_window()


def open_and_settle(qtbot, window, path, raw=None):
    with qtbot.waitSignal(window.opened, timeout=60_000):
        window.open_project(path, raw)
    qtbot.waitUntil(window.loader.is_settled, timeout=180_000)


class BoxAnswers:
    """Clicks the button named ``text`` of each modal message box as it appears; keeps the boxes' texts."""

    pending: list["BoxAnswers"] = []  # answers still expected, so that the teardown guard stands back

    def __init__(self, *buttons: str):
        self.buttons, self.texts = list(buttons), []
        self.timer = QtCore.QTimer(interval=20)
        self.timer.timeout.connect(self._answer)
        self.timer.start()
        BoxAnswers.pending.append(self)

    def _answer(self) -> None:
        box = QtWidgets.QApplication.activeModalWidget()
        if not isinstance(box, QtWidgets.QMessageBox) or not self.buttons or not box.isVisible():
            return
        self.texts.append(box.text())
        names = {b.text().replace("&", ""): b for b in box.buttons()}
        if self.buttons[0] not in names:  # another question than the one expected: said once, then left alone
            self.timer.stop()
            raise AssertionError(f"expected a box with {self.buttons[0]!r}, got {box.text()!r} {sorted(names)}")
        button = names[self.buttons[0]]
        self.buttons.pop(0)
        if not self.buttons:
            self.timer.stop()
            BoxAnswers.pending.remove(self)
        QtTest.QTest.mouseClick(button, QtCore.Qt.LeftButton)


@pytest.fixture
def new_window(make_window):
    """Like ``make_window``; a window left with unsaved labels (a test failed midway) is closed after the test
    without hanging on the question (pytest-qt closes the windows before fixtures end)."""
    def discard_unexpected_questions():
        box = QtWidgets.QApplication.activeModalWidget()
        if isinstance(box, QtWidgets.QMessageBox) and box.isVisible() and not BoxAnswers.pending:
            box.button(QtWidgets.QMessageBox.Discard).click()

    guard = QtCore.QTimer(interval=50)
    guard.timeout.connect(discard_unexpected_questions)
    guard.start()
    yield make_window
    guard.stop()
    BoxAnswers.pending.clear()
