"""Opening projects in the window: the File menu, the file dialog, recent files, drops, raw data that
moved (asked for, then remembered per project) and failures shown as dialogs, not tracebacks."""

from __future__ import annotations

import logging
import os

from PyQt5 import QtGui, QtWidgets

from backend.errors import RawDataMissing, UserError
from ilastik_desktop._qt.dialogs.new_project import NewProjectDialog
from ilastik_desktop.runtime.document import open_document

log = logging.getLogger(__name__)
RECENT_KEY, RAW_KEY = "recent", "raw_data/"


class ProjectOpening:
    """The main window's File menu and opening flow (a mixin of :class:`MainWindow`)."""

    def _build_menu(self) -> None:
        menu = self.menuBar().addMenu("&File")
        menu.addAction("&New project...", self.ask_new_project, QtGui.QKeySequence.New)
        menu.addAction("&Open project...", self.ask_open, QtGui.QKeySequence.Open)
        self.recent_menu = menu.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        self.export_action = menu.addAction("&Export...", self.open_export)
        self.change_raw_action = menu.addAction("Change &raw data...", self.ask_raw_data)
        self.forget_raw_action = menu.addAction("&Forget remembered raw data", self.forget_raw_data)
        self.serve_action = menu.addAction("&Serve over HTTP...", self.open_serve)
        self.save_action = menu.addAction("&Save labels and classifier", lambda: self.training.save(),
                                          QtGui.QKeySequence.Save)
        self.save_as_action = menu.addAction("Save &as...", self.ask_save_as, QtGui.QKeySequence.SaveAs)
        for action in (self.export_action, self.change_raw_action, self.forget_raw_action, self.serve_action,
                       self.save_action, self.save_as_action):
            action.setEnabled(False)
        menu.addSeparator()
        menu.addAction("&Quit", self.close, QtGui.QKeySequence.Quit)

    # -- opening --------------------------------------------------------------------------------------
    def ask_new_project(self) -> NewProjectDialog:
        """Ask for an image and its axes, write a new project for it and open it."""
        dialog = NewProjectDialog(self)
        dialog.created.connect(self.open_project)
        dialog.open()
        return dialog

    def ask_open(self) -> None:
        """Ask for a project file and open it."""
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Open ilastik project", "", "ilastik projects (*.ilp)")
        if path:
            self.open_project(path)

    def open_project(self, path: str, raw_data: str | None = None, remember: bool = False) -> None:
        """Open ``path`` in the background with ``raw_data`` (kept for next time if ``remember`` and it opens),
        else the raw data remembered for it, else the project's own."""
        if self.training is not None and not self.training.may_discard(self.interactive, "Open another project"):
            return
        path = os.path.abspath(path)
        remembered = self.settings.value(RAW_KEY + path, None)
        self.statusBar().showMessage(f"opening {path} ...")
        self.io.submit(self._open_in_background, path, raw_data or remembered,
                       "remember" if remember and raw_data else "remembered" if not raw_data and remembered else "")

    def _open_in_background(self, path: str, raw_data: str | None, memory: str) -> None:
        try:
            document = open_document(path, self.services, raw_data)
        except RawDataMissing as exc:
            self.bridge.post(self._locate_raw, path, exc)
            return
        except UserError as exc:
            if memory == "remembered":  # it no longer fits (or reads): do not offer it again
                self.bridge.post(self._forget, path)
                exc = UserError(f"{exc}\n\nThe remembered raw data {raw_data} was forgotten; opening the project "
                                "again uses the path it records.")
            self.bridge.post(self._fail, str(exc))
            return
        except Exception as exc:  # an unexpected failure is still a dialog, not a crash
            log.exception("opening %s failed", path)
            self.bridge.post(self._fail, f"{path}: {type(exc).__name__}: {exc}")
            return
        if memory == "remember":
            self.bridge.post(self.settings.setValue, RAW_KEY + path, raw_data)
        self.bridge.post(self._show, document)

    def ask_save_as(self) -> None:
        """Ask where to save a copy of the project with its labels and classifier, then show the copy."""
        if self.document is None:
            return
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Save project as", self.document.project.path,
                                                        "ilastik projects (*.ilp)")
        if path:
            self.training.save(path if path.endswith(".ilp") else path + ".ilp")

    def project_renamed(self, old: str) -> None:
        """The open project now lives at another path (Save As): title, recent files, remembered raw data."""
        path = self.document.project.path
        self._remember(path)
        if self.settings.contains(RAW_KEY + old):
            self.settings.setValue(RAW_KEY + path, self.settings.value(RAW_KEY + old))
        self.setWindowTitle(f"{os.path.basename(path)} - ilastik-desktop")

    def ask_raw_data(self) -> None:
        """Ask for another raw data file for the open project; it is remembered once it opens and fits."""
        if self.document is None:
            return
        path = self.document.project.path
        chosen, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Raw data for " + os.path.basename(path),
                                                          os.path.dirname(path))
        if chosen:
            self.open_project(path, chosen, remember=True)

    def forget_raw_data(self) -> None:
        """Forget the raw data remembered for the open project and reopen it with the path it records."""
        if self.document is not None:
            self._forget(self.document.project.path)
            self.open_project(self.document.project.path)

    def _forget(self, path: str) -> None:
        self.settings.remove(RAW_KEY + path)
        self.forget_raw_action.setEnabled(False)

    def _locate_raw(self, path: str, error: RawDataMissing) -> None:
        if not self.interactive:
            self._fail(str(error))
            return
        QtWidgets.QMessageBox.information(self, "Raw data not found", f"{error}\n\nPlease locate the file.")
        chosen, _ = QtWidgets.QFileDialog.getOpenFileName(self, f"Locate {os.path.basename(error.path)}",
                                                          os.path.dirname(path))
        if not chosen:
            self._fail(str(error))
            return
        internal = error.path.split(".h5/", 1)[1] if ".h5/" in error.path else ""
        raw = chosen + ("/" + internal if internal and chosen.endswith(".h5") else "")
        self.open_project(path, raw, remember=True)

    def _fail(self, message: str) -> None:
        self.statusBar().showMessage("could not open the project", 5000)
        self.failed.emit(message)
        if self.interactive:
            QtWidgets.QMessageBox.critical(self, "ilastik-desktop", message)

    # -- recent files and drops -------------------------------------------------------------------------
    def _remember(self, path: str) -> None:
        recent = [p for p in (self.settings.value(RECENT_KEY) or []) if p != path]
        self.settings.setValue(RECENT_KEY, [path] + recent[:9])

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for path in self.settings.value(RECENT_KEY) or []:
            self.recent_menu.addAction(path, lambda p=path: self.open_project(p))

    def dragEnterEvent(self, event: QtGui.QDragEnterEvent) -> None:  # noqa: N802 - Qt's name
        if any(url.toLocalFile().endswith(".ilp") for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QtGui.QDropEvent) -> None:  # noqa: N802 - Qt's name
        for url in event.mimeData().urls():
            if url.toLocalFile().endswith(".ilp"):
                self.open_project(url.toLocalFile())
                return
