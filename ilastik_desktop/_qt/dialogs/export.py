"""The export dialog: the headless export through the window's gateway, with progress and cancel."""

from __future__ import annotations

import os
import threading
import time

from PyQt5 import QtCore, QtWidgets

from backend.compute.threshold import ThresholdSettings
from backend.errors import UserError
from backend.io.sources import split_internal_path
from backend.service.export import EXPORT_SOURCES, ExportCancelled, ExportOptions, formats_for, piece_unit, run_export
from backend.wording import counted
from ilastik_desktop.runtime.document import Document
from ilastik_desktop.runtime.frozen import open_externally
from viewer.bridge import GuiBridge


def raw_name(document: Document) -> str:
    """The name of the raw data actually shown (another file than the project's, when the user chose one)."""
    path, _ = split_internal_path(document.source.description.split(os.pathsep)[0])
    return os.path.splitext(os.path.basename(path))[0] or document.project.lanes[0].nickname or "export"


def default_pattern(document: Document) -> str:
    """Next to the raw data's name, in the project's folder: ``FOLDER/RAWNAME_{result_type}``."""
    folder = os.path.dirname(os.path.abspath(document.project.path))
    return os.path.join(folder, f"{raw_name(document)}_{{result_type}}")


def offer_formats(source: QtWidgets.QComboBox, formats: QtWidgets.QComboBox) -> None:
    """Keep ``formats`` listing the formats the source chosen in ``source`` can be written in (the choice kept
    when the new source has it, else the first)."""

    def refill() -> None:
        chosen = formats.currentText()
        offered = formats_for(source.currentText())
        formats.clear()
        formats.addItems(offered)
        formats.setCurrentText(chosen if chosen in offered else offered[0])

    source.currentTextChanged.connect(refill)
    refill()


def format_seconds(seconds: float) -> str:
    """``42 s`` or ``3 min 05 s`` or ``2 h 07 min``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class ExportDialog(QtWidgets.QDialog):
    """Choose what and where; ``export_done`` reports the written path or why nothing was written."""

    export_done = QtCore.pyqtSignal(str, str)  # path ("" if none), message

    def __init__(self, document: Document, threshold: ThresholdSettings, bridge: GuiBridge, parent=None,
                 previous: ExportDialog | None = None):
        """``previous``: the dialog shown before in this session, whose source and format are chosen again."""
        super().__init__(parent)
        self.document, self.threshold, self.bridge = document, threshold, bridge
        self.cancel_event: threading.Event | None = None
        self.thread: threading.Thread | None = None
        self.setWindowTitle("Export")
        form = QtWidgets.QFormLayout(self)
        self.source = QtWidgets.QComboBox()
        self.source.addItems(EXPORT_SOURCES)
        self.format = QtWidgets.QComboBox()
        offer_formats(self.source, self.format)
        if previous is not None:
            self.source.setCurrentText(previous.source.currentText())
            self.format.setCurrentText(previous.format.currentText())
        self.setMinimumWidth(720)  # paths and messages readable
        self.path = QtWidgets.QLineEdit(default_pattern(document))
        browse = QtWidgets.QPushButton("...")
        browse.clicked.connect(self._browse)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.path)
        row.addWidget(browse)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setFormat("%v / %m")
        self.started_at = 0.0
        self.message = QtWidgets.QLabel(wordWrap=True, textInteractionFlags=QtCore.Qt.TextSelectableByMouse)
        self.start = QtWidgets.QPushButton("Export")
        self.start.clicked.connect(self.start_export)
        self.stop = QtWidgets.QPushButton("Cancel", enabled=False)
        self.stop.clicked.connect(self.cancel_export)
        self.show_folder = QtWidgets.QPushButton("Show in folder", enabled=False)
        self.show_folder.clicked.connect(lambda: open_externally(os.path.dirname(self.written)))
        self.written = ""
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.start)
        buttons.addWidget(self.stop)
        buttons.addWidget(self.show_folder)
        form.addRow("Source", self.source)
        form.addRow("Format", self.format)
        form.addRow("File", row)
        form.addRow(self.progress)
        form.addRow(self.message)
        form.addRow(buttons)

    def _browse(self) -> None:
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Export to", self.path.text())
        if path:
            self.path.setText(path)

    def running(self) -> bool:
        """True while an export runs."""
        return self.thread is not None and self.thread.is_alive()

    def start_export(self) -> None:
        """Start exporting in the background (creating the output folder if it is missing)."""
        folder = os.path.dirname(os.path.abspath(self.path.text()))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            self.message.setText(f"cannot create the folder {folder}: {exc.strerror or exc}")
            self._fit_message()
            return
        self.started_at = time.monotonic()
        options = ExportOptions(kind=self.source.currentText(), fmt=self.format.currentText(),
                                filename_pattern=self.path.text(), progress=False, threshold=self.threshold)
        self.cancel_event = threading.Event()
        self.start.setEnabled(False)
        self.stop.setEnabled(True)
        self.progress.setRange(0, 0)  # busy until the export says how many pieces it has
        self.message.setText("starting ...")
        self.thread = threading.Thread(target=self._run, args=(options, self.cancel_event), name="export",
                                       daemon=True)
        self.thread.start()

    def _run(self, options: ExportOptions, cancel: threading.Event) -> None:
        try:
            result = run_export(self.document.gateway, raw_name(self.document), options,
                                on_progress=lambda d, t: self.bridge.post(self.show_progress, d, t), cancel=cancel)
            highest = "" if result.highest_object_id is None else f"; highest object ID {result.highest_object_id}"
            outcome = (result.path, f"wrote {result.path} ({counted(result.blocks, piece_unit(options.kind))}, "
                                    f"{result.seconds:.1f} s{highest})")
        except ExportCancelled:
            outcome = ("", "cancelled; nothing was written")
        except UserError as exc:
            outcome = ("", str(exc))
        except Exception as exc:  # reported in the dialog
            outcome = ("", f"{type(exc).__name__}: {exc}")
        self.bridge.post(self._finished, *outcome)

    def show_progress(self, done: int, total: int) -> None:
        """``done`` of ``total`` pieces written (first 0, as soon as the total is known): the bar, and the time left
        estimated from the time so far."""
        self.progress.setRange(0, total)
        self.progress.setValue(done)
        elapsed = time.monotonic() - self.started_at
        left = elapsed / done * (total - done) if done else None
        self.message.setText("exporting ..." if left is None else
                             f"exporting: {elapsed:.0f} s so far, about {format_seconds(left)} left")

    def _finished(self, path: str, message: str) -> None:
        if self.progress.maximum() == 0:  # ended before it knew its total: not busy any more
            self.progress.setRange(0, 1)
            self.progress.reset()
        self.written = path
        self.show_folder.setEnabled(bool(path))  # the desktop's file manager, with the user's own libraries
        self.start.setEnabled(True)
        self.stop.setEnabled(False)
        self.message.setText(message)
        self._fit_message()
        self.export_done.emit(path, message)

    def _fit_message(self) -> None:
        """Grow the dialog's height until its message, wrapped to the dialog's width, is shown whole above the
        buttons (a form layout does not grow a window for a label's wrapped lines by itself)."""
        layout = self.layout()
        layout.activate()
        needed = layout.totalHeightForWidth(self.width())
        if needed > self.height():
            self.resize(self.width(), needed)

    def cancel_export(self) -> None:
        """Stop the running export (its partial output is removed)."""
        if self.cancel_event is not None:
            self.cancel_event.set()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.cancel_export()
        if self.thread is not None:
            self.thread.join(timeout=30)
        super().closeEvent(event)
