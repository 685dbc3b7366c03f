"""The project's lanes in the window: a toolbar naming each lane by nickname (choosing one shows it) and
File > Add images, which asks for image files and their axes (guessed as File > New project guesses them)
and adds each as a lane."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from PyQt5 import QtCore, QtWidgets

from backend.errors import UserError
from backend.io.sources import open_source
from backend.io.sources.damage import first_line
from ilastik_desktop._qt.panels.project import ok_cancel
from ilastik_desktop.runtime.training import TrainingController

log = logging.getLogger(__name__)


class LaneSwitcher(QtWidgets.QToolBar):
    """A combo box of the lanes of the project shown (``index: nickname``); choosing one shows that lane."""

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__("Lanes", parent)
        self.setObjectName("lanes")
        self.addWidget(QtWidgets.QLabel(" Lane "))
        self.combo = QtWidgets.QComboBox(minimumContentsLength=20)
        self.combo.setSizeAdjustPolicy(QtWidgets.QComboBox.AdjustToContents)
        self.combo.setToolTip("the image shown: labels can be painted on every lane, and training learns from "
                              "the labels of all of them")
        self.addWidget(self.combo)
        self.controller: TrainingController | None = None
        self.combo.activated.connect(self._chosen)
        self.setEnabled(False)

    def bind(self, controller: TrainingController | None) -> None:
        """List ``controller``'s lanes (None: no project) and follow lanes being added."""
        self.controller = controller
        if controller is not None:
            controller.lanes_changed.connect(lambda: self.refresh())
        self.refresh()

    def refresh(self) -> None:
        """List the lanes, the one shown selected."""
        self.combo.blockSignals(True)
        self.combo.clear()
        if self.controller is not None:
            self.combo.addItems([f"{i}: {name}" for i, name in enumerate(self.controller.lane_names)])
            self.combo.setCurrentIndex(self.controller.document.lane)
        self.combo.blockSignals(False)
        self.setEnabled(self.controller is not None)

    def _chosen(self, index: int) -> None:
        if self.controller is not None:
            self.controller.show_lane(index)


class AddImagesDialog(QtWidgets.QDialog):
    """The images to add as lanes with their axes, guessed in the background (``post`` brings the guesses to
    the GUI thread) and editable; ``chosen([(image, axes), ...])``."""

    chosen = QtCore.pyqtSignal(list)

    def __init__(self, images: list[str], post: Callable[..., None], parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Add images")
        self.setMinimumWidth(720)
        self.table = QtWidgets.QTableWidget(len(images), 3)
        self.table.setHorizontalHeaderLabels(["Image", "Axes", "Shape"])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.closed = False
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="add-images")
        self.finished.connect(self._stop)
        for row, image in enumerate(images):
            name = QtWidgets.QTableWidgetItem(image)
            name.setFlags(name.flags() & ~QtCore.Qt.ItemIsEditable)
            self.table.setItem(row, 0, name)
            self.table.setItem(row, 1, QtWidgets.QTableWidgetItem(""))
            shape = QtWidgets.QTableWidgetItem("reading ...")
            shape.setFlags(shape.flags() & ~QtCore.Qt.ItemIsEditable)
            self.table.setItem(row, 2, shape)
            future = self.pool.submit(guessed_axes, image)
            future.add_done_callback(lambda f, r=row: post(self._guessed, r, f))
        self.table.resizeColumnsToContents()
        content = QtWidgets.QVBoxLayout()
        content.addWidget(QtWidgets.QLabel("Each image becomes a lane. Axes: one letter per dimension of the file "
                                           "(t, z, y, x, c), as ilastik's axistags."))
        content.addWidget(self.table)
        self.message = QtWidgets.QLabel(wordWrap=True, styleSheet="color: #b00;")
        ok_cancel(self, content, self.message, self.add)

    def _guessed(self, row: int, future: Future) -> None:
        if self.closed or future.cancelled():
            return
        axes, about = future.result()
        if not self.table.item(row, 1).text():  # unless the user typed them meanwhile
            self.table.item(row, 1).setText(axes)
        self.table.item(row, 2).setText(about)
        self.table.resizeColumnsToContents()

    def _stop(self) -> None:
        self.closed = True
        self.pool.shutdown(wait=False, cancel_futures=True)

    def guessing(self) -> bool:
        """True while some images' axes are still being guessed."""
        return any(self.table.item(row, 2).text() == "reading ..." for row in range(self.table.rowCount()))

    def images(self) -> list[tuple[str, str | None]]:
        """(image, axes or None to guess them) of every row."""
        return [(self.table.item(row, 0).text(), self.table.item(row, 1).text().strip().lower() or None)
                for row in range(self.table.rowCount())]

    def add(self) -> None:
        """Report the images and their axes and close."""
        self.accept()
        self.chosen.emit(self.images())


def guessed_axes(image: str) -> tuple[str, str]:
    """The axes of ``image`` as File > New project guesses them, and its shape and type (or what is wrong)."""
    try:
        source = open_source(image)
    except UserError as exc:
        return "", str(exc)
    except Exception as exc:  # a reader's own failure: one line on the row, the traceback in the log
        log.exception("reading %s for Add images failed", image)
        return "", f"{image}: cannot be read ({first_line(exc)})"
    guessed = " (axes guessed: check them)" if source.axes_guessed else ""
    return source.axes, f"{' x '.join(map(str, source.native_shape))} {source.dtype.name}{guessed}"


def ask_add_images(window) -> AddImagesDialog | None:
    """File > Add images: ask for image files, then their axes; the window's training adds them as lanes."""
    if window.training is None:
        return None
    images, _ = QtWidgets.QFileDialog.getOpenFileNames(window, "Images to add as lanes",
                                                       window.document.project.directory)
    return add_images_dialog(window, images) if images else None


def add_images_dialog(window, images: list[str]) -> AddImagesDialog:
    """The dialog asking for the axes of ``images``, shown; its OK adds them as lanes of the window's project."""
    dialog = AddImagesDialog(images, window.bridge.post, window)
    controller = window.training.controller
    dialog.chosen.connect(controller.add_images)
    dialog.open()
    return dialog
