"""File > Batch processing: export many files with the open project's classifier, a status per file, the
progress of the file being written and of the whole batch, and cancel."""

from __future__ import annotations

import os
from collections.abc import Callable

from PyQt5 import QtCore, QtWidgets

from backend.compute.threshold import ThresholdSettings
from backend.errors import DataError, UserError
from backend.io.sources import DataSource
from backend.service.export import EXPORT_SOURCES, ExportOptions, piece_unit
from ilastik_desktop._qt.dialogs.export import offer_formats
from ilastik_desktop.runtime.batch import WRITTEN, BatchRunner, BatchSummary, FileOutcome
from ilastik_desktop.runtime.document import Document
from ilastik_desktop.runtime.services import Services
from viewer.bridge import GuiBridge

DEFAULT_PATTERN = "{dataset_dir}/{nickname}_{result_type}"  # ilastik's --output_filename_format default
FILE_COLUMN, STATUS_COLUMN = 0, 1


class BatchDialog(QtWidgets.QDialog):
    """Pick files, what to export and where; ``threshold()`` gives the thresholding for Objects when a batch
    starts; ``batch_done`` reports the :class:`BatchSummary`."""

    batch_done = QtCore.pyqtSignal(object)

    def __init__(self, document: Document, threshold: Callable[[], ThresholdSettings], services: Services,
                 bridge: GuiBridge, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.document, self.threshold, self.services, self.bridge = document, threshold, services, bridge
        self.runner: BatchRunner | None = None
        self.setWindowTitle("Batch processing")
        self.setMinimumWidth(760)
        form = QtWidgets.QFormLayout(self)
        self.files = QtWidgets.QTableWidget(0, 2)
        self.files.setHorizontalHeaderLabels(["File", "Status"])
        self.files.horizontalHeader().setSectionResizeMode(FILE_COLUMN, QtWidgets.QHeaderView.Stretch)
        self.files.horizontalHeader().setSectionResizeMode(STATUS_COLUMN, QtWidgets.QHeaderView.Stretch)
        self.files.setEditTriggers(QtWidgets.QAbstractItemView.NoEditTriggers)
        self.add = QtWidgets.QPushButton("Add files...")
        self.add.clicked.connect(self._ask_files)
        self.remove = QtWidgets.QPushButton("Remove")
        self.remove.clicked.connect(self.remove_selected)
        file_buttons = QtWidgets.QHBoxLayout()
        file_buttons.addWidget(self.add)
        file_buttons.addWidget(self.remove)
        file_buttons.addStretch()
        self.source = QtWidgets.QComboBox()
        self.source.addItems(EXPORT_SOURCES)
        self.format = QtWidgets.QComboBox()
        offer_formats(self.source, self.format)
        self.pattern = QtWidgets.QLineEdit(DEFAULT_PATTERN)
        self.pattern.setToolTip("{dataset_dir}: the input's folder, {nickname}: its name, {result_type}: the source")
        folder = QtWidgets.QPushButton("Folder...")
        folder.clicked.connect(self._ask_folder)
        pattern_row = QtWidgets.QHBoxLayout()
        pattern_row.addWidget(self.pattern)
        pattern_row.addWidget(folder)
        self.file_progress = QtWidgets.QProgressBar(format="this file: %v / %m blocks")
        self.overall = QtWidgets.QProgressBar(format="batch: %v / %m files")
        self.message = QtWidgets.QLabel(wordWrap=True, textInteractionFlags=QtCore.Qt.TextSelectableByMouse)
        self.start = QtWidgets.QPushButton("Start")
        self.start.clicked.connect(self.start_batch)
        self.stop = QtWidgets.QPushButton("Cancel", enabled=False)
        self.stop.clicked.connect(self.cancel_batch)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.start)
        buttons.addWidget(self.stop)
        form.addRow(self.files)
        form.addRow(file_buttons)
        form.addRow("Source", self.source)
        form.addRow("Format", self.format)
        form.addRow("Output", pattern_row)
        form.addRow(self.file_progress)
        form.addRow(self.overall)
        form.addRow(self.message)
        form.addRow(buttons)

    # -- the list of files ------------------------------------------------------------------------------
    def _ask_files(self) -> None:
        folder = os.path.dirname(os.path.abspath(self.document.project.path))
        paths, _ = QtWidgets.QFileDialog.getOpenFileNames(self, "Images to process", folder)
        self.add_files(paths)

    def _ask_folder(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Write the results into")
        if folder:
            self.pattern.setText(os.path.join(folder, "{nickname}_{result_type}"))

    def add_files(self, specs: list[str]) -> None:
        """Add raw data files (``file.h5/internal/path`` or a glob pattern) to the list, each once."""
        for spec in specs:
            if spec and spec not in self.specs():
                row = self.files.rowCount()
                self.files.insertRow(row)
                self.files.setItem(row, FILE_COLUMN, QtWidgets.QTableWidgetItem(spec))
                self.files.setItem(row, STATUS_COLUMN, QtWidgets.QTableWidgetItem(""))

    def remove_selected(self) -> None:
        """Take the selected files off the list (not while a batch runs)."""
        if not self.running():
            for row in sorted({index.row() for index in self.files.selectedIndexes()}, reverse=True):
                self.files.removeRow(row)

    def specs(self) -> list[str]:
        """The files listed, in order."""
        return [self.files.item(row, FILE_COLUMN).text() for row in range(self.files.rowCount())]

    def status(self, row: int) -> str:
        """The status shown for the file in ``row``."""
        return self.files.item(row, STATUS_COLUMN).text()

    # -- the batch --------------------------------------------------------------------------------------
    def running(self) -> bool:
        """True while a batch runs."""
        return self.runner is not None and self.runner.running()

    def start_batch(self) -> None:
        """Export every listed file (glob patterns replaced by their files) in the background."""
        if not self.specs():
            self.message.setText("add the files to process first")
            return
        project = self.document.project
        pipeline = self.document.gateway.pipeline  # the classifier shown now, for the whole batch
        shown = self.document.source
        options = ExportOptions(kind=self.source.currentText(), fmt=self.format.currentText(),
                                filename_pattern=self.pattern.text(), progress=False, threshold=self.threshold())
        try:
            runner = BatchRunner(self.services, project, options,
                                 lambda source: self._fitting(source, shown, pipeline), call_soon=self.bridge.post)
        except UserError as exc:
            self.message.setText(str(exc))
            return
        self.runner = runner
        runner.files_listed.connect(self._files_listed)
        runner.file_started.connect(self._file_started)
        runner.file_progress.connect(self._file_progress)
        runner.file_finished.connect(self._file_finished)
        runner.finished.connect(self._finished)
        self.overall.setRange(0, 0)  # busy while the patterns are expanded
        self.file_progress.setValue(0)
        self.file_progress.setFormat(f"this file: %v / %m {piece_unit(options.kind)}s")
        self.start.setEnabled(False)
        self.remove.setEnabled(False)
        self.stop.setEnabled(True)
        self.message.setText("processing ...")
        runner.start(self.specs(), expand=True)  # the patterns are read in the background (a stack's first file)

    def _files_listed(self, files: list[str]) -> None:
        self.files.setRowCount(0)
        self.add_files(files)
        for row in range(self.files.rowCount()):
            self.files.item(row, STATUS_COLUMN).setText("waiting")
        self.overall.setRange(0, len(files))
        self.overall.setValue(0)

    @staticmethod
    def _fitting(source: DataSource, shown: DataSource, pipeline):
        if source.channels != shown.channels or (source.shape[1] > 1) != (shown.shape[1] > 1):
            raise DataError(f"{source.description}: {source.channels} channels, "
                            f"{'3D' if source.shape[1] > 1 else '2D'}; the classifier was trained on "
                            f"{shown.channels} channels, {'3D' if shown.shape[1] > 1 else '2D'}")
        return pipeline

    def _file_started(self, index: int, spec: str) -> None:
        self.files.item(index, STATUS_COLUMN).setText("exporting ...")
        self.files.scrollToItem(self.files.item(index, FILE_COLUMN))
        self.file_progress.setValue(0)

    def _file_progress(self, index: int, done: int, total: int) -> None:
        self.file_progress.setRange(0, total)
        self.file_progress.setValue(done)

    def _file_finished(self, index: int, outcome: FileOutcome) -> None:
        label = outcome.message if outcome.status == WRITTEN else f"{outcome.status}: {outcome.message}"
        self.files.item(index, STATUS_COLUMN).setText(label)
        self.files.item(index, STATUS_COLUMN).setToolTip(label)
        self.overall.setValue(index + 1)

    def _finished(self, summary: BatchSummary) -> None:
        self.start.setEnabled(True)
        self.remove.setEnabled(True)
        self.stop.setEnabled(False)
        self.message.setText(summary.line)
        self.batch_done.emit(summary)

    def cancel_batch(self) -> None:
        """Stop the batch; the partial output of the file being written is removed."""
        if self.runner is not None:
            self.runner.cancel()

    def finish(self) -> bool:
        """Cancel a running batch and wait, at most ``window.batch_stop_s``, until it has stopped and removed its
        partial output; True if it has."""
        if self.runner is None:
            return True
        self.runner.cancel()
        return self.runner.join(timeout=self.services.config.window.batch_stop_s)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.cancel_batch()  # the batch's own thread removes the partial output
        super().closeEvent(event)


def open_batch_dialog(window) -> BatchDialog | None:
    """Show the batch dialog of the window's open project (kept as ``window.batch_dialog``); None and a
    message in the status bar when no project is open."""
    if window.document is None:
        window.statusBar().showMessage("open a trained project first; batch processing runs its classifier", 5000)
        return None
    dialog = getattr(window, "batch_dialog", None)
    if dialog is not None and dialog.document.project.path == window.document.project.path:
        dialog.document = window.document  # the same project, maybe another lane shown: a running batch goes on
    else:
        if dialog is not None and not dialog.finish():
            window.statusBar().showMessage("the other project's batch is still stopping; try again shortly", 5000)
            return None
        if dialog is not None:
            dialog.deleteLater()
        dialog = window.batch_dialog = BatchDialog(window.document, lambda: window.threshold_panel.settings(),
                                                   window.services, window.bridge, window)
    dialog.show()
    dialog.raise_()
    return dialog
