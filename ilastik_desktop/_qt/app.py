"""The desktop application: Qt + asyncio (qasync), the compute services and the main window."""

from __future__ import annotations

import asyncio
import dataclasses
import sys

from ilastik_desktop.runtime.frozen import resource_path
from ilastik_desktop.runtime.settings import ComputeSettings


def run_gui(project: str | None, raw_data: str | None, compute: ComputeSettings, screenshot: str | None = None,
            size: tuple[int, int] = (1600, 1000), timeout_s: float = 600.0) -> int:
    """Show the main window (optionally open ``project``); with ``screenshot``, save it once complete and exit."""
    import qasync
    from PyQt5 import QtWidgets

    from ilastik_desktop._qt.main_window import MainWindow
    from ilastik_desktop.runtime.services import Services

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setApplicationName("ilastik-desktop")
    icon = resource_path("icon.svg")
    if icon:
        from PyQt5 import QtGui

        app.setWindowIcon(QtGui.QIcon(icon))
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    with Services(dataclasses.replace(compute, enable_remote=True, fail_without_workers=False)) as services:
        window = MainWindow(services, interactive=screenshot is None)
        window.resize(*size)
        window.show()
        outcome = {"code": 0}
        if screenshot:
            _arm_screenshot(window, screenshot, timeout_s, outcome, app)
        if project:
            window.open_project(project, raw_data)
        with loop:
            loop.run_until_complete(_until_quit(app))
        window.close()
    return outcome["code"]


async def _until_quit(app) -> None:
    done = asyncio.Event()
    app.aboutToQuit.connect(done.set)
    await done.wait()


def _arm_screenshot(window, path: str, timeout_s: float, outcome: dict, app) -> None:
    """Save the window to ``path`` when the visible predictions are complete; exit 1 on failure or timeout."""
    from PyQt5 import QtCore

    def finish(code: int, message: str | None = None) -> None:
        if message:
            print(f"ilastik-desktop: {message}", file=sys.stderr)
        outcome["code"] = code
        app.quit()

    def opened(_document) -> None:
        # wait a little longer than the status bar's refresh so it shows the current figures
        settle_ms = round(window.services.config.window.screenshot_settle_s * 1000)
        window.loader.settled.connect(lambda: QtCore.QTimer.singleShot(settle_ms, capture))

    def capture() -> None:
        if not window.loader.is_settled():
            return
        app.processEvents()
        if window.grab().save(path):
            print(f"screenshot written: {path}", file=sys.stderr)
            finish(0)
        else:
            finish(1, f"cannot write the screenshot to {path}")

    window.opened.connect(opened)
    window.failed.connect(lambda message: finish(2, f"error: {message}"))
    QtCore.QTimer.singleShot(int(timeout_s * 1000), lambda: finish(1, f"predictions not complete after {timeout_s} s"))
