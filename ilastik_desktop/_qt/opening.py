"""Opening projects in the window: the File menu, the file dialog, recent files, drops, raw data that
moved (asked for, then remembered per project), labels journalled by a session that ended without saving
them (offered back) and failures shown as dialogs, not tracebacks."""

from __future__ import annotations

import os

from PyQt5 import QtGui, QtWidgets

from backend.errors import RawDataMissing
from ilastik_desktop._qt.dialogs.batch import open_batch_dialog
from ilastik_desktop._qt.dialogs.new_project import NewProjectDialog
from ilastik_desktop._qt.panels.lanes import ask_add_images
from ilastik_desktop.runtime.opening import journal_offer, located_raw_data


class ProjectOpening:
    """The main window's File menu and opening flow (a mixin of :class:`MainWindow`)."""

    # what becomes of unsaved labels journalled for a project being opened: "ask" the user (Restore / Discard),
    # "restore" them (only if the project was not saved elsewhere since), "discard" or "keep" them for later;
    # None: ask in an interactive window, keep otherwise
    journal_policy: str | None = None

    def _build_menu(self) -> None:
        menu = self.menuBar().addMenu("&File")
        menu.addAction("&New project...", self.ask_new_project, QtGui.QKeySequence.New)
        menu.addAction("&Open project...", self.ask_open, QtGui.QKeySequence.Open)
        self.recent_menu = menu.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        self.add_images_action = menu.addAction("&Add images...", lambda: ask_add_images(self))
        self.export_action = menu.addAction("&Export...", self.open_export)
        menu.addAction("&Batch processing...", lambda: open_batch_dialog(self))
        self.change_raw_action = menu.addAction("Change &raw data...", self.ask_raw_data)
        self.forget_raw_action = menu.addAction("&Forget remembered raw data", self.forget_raw_data)
        self.serve_action = menu.addAction("&Serve over HTTP...", self.open_serve)
        self.save_action = menu.addAction("&Save labels and classifier", lambda: self.training.save(),
                                          QtGui.QKeySequence.Save)
        self.save_as_action = menu.addAction("Save &as...", self.ask_save_as, QtGui.QKeySequence.SaveAs)
        for action in (self.add_images_action, self.export_action, self.change_raw_action, self.forget_raw_action,
                       self.serve_action, self.save_action, self.save_as_action):
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

    def bind_opener(self) -> None:
        """Show the opener's outcomes: the document, a dialog to locate missing raw data, or the failure."""
        self.opener.opened.connect(self._show)
        self.opener.raw_missing.connect(self._locate_raw)
        self.opener.failed.connect(self._fail)
        self.opener.journal_found.connect(self._offer_journal)

    def open_project(self, path: str, raw_data: str | None = None, remember: bool = False) -> None:
        """Open ``path`` in the background with ``raw_data`` (kept for next time if ``remember`` and it opens),
        else the raw data remembered for it, else the project's own."""
        if self.training is not None and not self.training.may_discard(
                self.interactive, "opening another project", lambda: self.open_project(path, raw_data, remember)):
            return
        self.statusBar().showMessage(f"opening {os.path.abspath(path)} ...")
        self.opener.open(path, raw_data, remember)

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
        self.opener.moved(old, path)
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
            self.opener.forget(self.document.project.path)
            self.forget_raw_action.setEnabled(False)
            self.open_project(self.document.project.path)

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
        self.open_project(path, located_raw_data(error, chosen), remember=True)

    def _offer_journal(self, document, journal) -> None:
        """Offer back the labels journalled for ``document`` by a session that ended without saving them."""
        if document is not self.document or self.training is None:
            return  # another project replaced it meanwhile
        belongs, question = journal_offer(document.project.path, journal)
        policy = self.journal_policy or ("ask" if self.interactive else "keep")
        if policy == "ask":
            box = QtWidgets.QMessageBox(QtWidgets.QMessageBox.Question if belongs else QtWidgets.QMessageBox.Warning,
                                        "Unsaved labels found", question, QtWidgets.QMessageBox.Discard, self)
            restore = box.addButton("Restore" if belongs else "Restore anyway", QtWidgets.QMessageBox.AcceptRole)
            box.setDefaultButton(restore if belongs else box.button(QtWidgets.QMessageBox.Discard))
            box.exec()
            policy = "restore" if box.clickedButton() is restore else "discard"
        elif policy == "restore" and not belongs:
            policy = "keep"
        controller = self.training.controller
        if policy == "restore":
            controller.restore(journal)
            controller.message.emit(f"restored the unsaved labels of {journal.path}")
        elif policy == "discard":
            controller.discard_unsaved()
        else:
            controller.message.emit(f"unsaved labels in {journal.path} were not restored"
                                    + ("" if belongs else ": the project was saved elsewhere since"))

    def _fail(self, message: str) -> None:
        self.statusBar().showMessage("could not open the project", 5000)
        self.failed.emit(message)
        if self.interactive:
            QtWidgets.QMessageBox.critical(self, "ilastik-desktop", message)

    # -- recent files and drops -------------------------------------------------------------------------
    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for path in self.opener.recent():
            self.recent_menu.addAction(path, lambda p=path: self.open_project(p))

    def dragEnterEvent(self, event: QtGui.QDragEnterEvent) -> None:  # noqa: N802 - Qt's name
        if any(url.toLocalFile().endswith(".ilp") for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QtGui.QDropEvent) -> None:  # noqa: N802 - Qt's name
        for url in event.mimeData().urls():
            if url.toLocalFile().endswith(".ilp"):
                self.open_project(url.toLocalFile())
                return
