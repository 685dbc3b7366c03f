"""The Training tab bound to the Qt-free :class:`~ilastik_desktop.runtime.training.TrainingController`:
strokes from the views, the panel's buttons and ilastik's labeling keys go to the controller; its signals
repaint the labels overlay, renew the overlays, refresh the classes and report in the panel. Live
training is debounced here (a stroke starts training once no other stroke followed for a moment)."""

from __future__ import annotations

from collections.abc import Callable

from PyQt5 import QtCore, QtGui, QtWidgets

from backend.compute.geometry import Roi
from backend.io.training import collect_frozen_garbage
from backend.service.export import default_block_shape
from ilastik_desktop._qt.dialogs.features import FeatureDialog
from ilastik_desktop._qt.panels.training import ERASER, TrainingPanel
from ilastik_desktop.runtime.training import TrainingController
from viewer.labels_layer import paint_labels
from viewer.model import LABELS

LABELING_KEYS = (("N", "navigate: left drags pan again"), ("B", "paint labels with the brush"),
                 ("E", "paint labels with the eraser"), ("A", "add a class and paint with it"),
                 *((str(n), "paint with class 1 to 9") for n in range(1, 10)), (",", "smaller brush"),
                 (".", "larger brush"), ("L", "live training on or off"))  # ilastik's, while a project is open


class TrainingBinding(QtCore.QObject):
    """The window's training: the panel, the keys and the debounce; ``trained`` and ``saved`` report outcomes."""

    trained = QtCore.pyqtSignal(str)
    saved = QtCore.pyqtSignal(str)

    def __init__(self, window, document, parent=None):
        super().__init__(parent)
        self.window, self.document = window, document
        services = window.services
        self.controller = TrainingController(
            document, services.executor, services.config.training, window.bridge.post,
            lambda source, pipeline: services.gateway(source, pipeline, default_block_shape(source.spatial_shape)))
        controller = self.controller
        controller.lane_shown.connect(lambda shown: window._show(shown))
        self.panel = TrainingPanel(controller.names, controller.colors)
        self.timer = QtCore.QTimer(self, singleShot=True, interval=round(services.config.training.debounce_s * 1000))
        self.timer.timeout.connect(controller.train)
        # Qt's own methods take their arguments from psygnal through lambdas (it cannot see their signatures)
        controller.training_wanted.connect(self._training_wanted)
        controller.message.connect(lambda text: self.panel.status.setText(text))
        controller.trained.connect(lambda text: self.trained.emit(text))
        controller.saved.connect(lambda text: self.saved.emit(text))
        controller.renamed.connect(window.project_renamed)
        controller.labels_changed.connect(self.repaint)
        controller.labels_painted.connect(self.repaint)
        controller.classes_changed.connect(self._classes_changed)
        controller.pipeline_changed.connect(self._renew)
        self.panel.painting.connect(self._set_painting)
        self.panel.live.toggled.connect(self._set_live)
        self._set_live(self.panel.live.isChecked())
        self.panel.undo.connect(controller.undo)
        self.panel.redo.connect(controller.redo)
        self.panel.train.connect(controller.train)
        self.panel.edit_class.connect(self.edit_class)
        self.panel.choose_features.connect(self.choose_features)
        self.shortcuts = self._ilastik_keys()
        self._bind_views()

    def show_lane(self, document) -> None:
        """The window now shows ``document``, another lane: paint on its views."""
        self.document = document
        self._bind_views()

    def _bind_views(self) -> None:
        for view in self.window.views:
            view.stroked.connect(lambda points, v=view: self.stroke(v, points))
            view.brush_pressed.connect(lambda row, col, v=view: self.begin_stroke(v, row, col))
            view.brush_moved.connect(self.controller.stroke_to)
            view.brush_released.connect(self.controller.end_stroke)
            view.painting = self.panel.paint.isChecked()
        self.window.model.position_changed.connect(self._moved)
        self.window.model.layers_changed.connect(self._layer_changed)
        self.repaint()

    def save(self, target: str | None = None) -> None:
        """Save into the project, with the thresholding panel's settings, or into a copy at ``target`` that the
        window then shows (Save As)."""
        self.controller.save(self.window.threshold_panel.settings(), target)

    # -- binding --------------------------------------------------------------------------------------
    def _ilastik_keys(self) -> list[QtWidgets.QShortcut]:
        """ilastik's labeling keys (:data:`LABELING_KEYS`) and undo/redo (the platform's keys), anywhere in the
        window."""
        panel = self.panel
        undo, redo = _standard(QtGui.QKeySequence.Undo), _standard(QtGui.QKeySequence.Redo)
        actions = {"N": lambda: panel.paint.setChecked(False), "B": panel.brush, "E": panel.erase,
                   "A": self.add_class, ",": lambda: panel.step_size(-1), ".": lambda: panel.step_size(1),
                   "L": panel.live.toggle, undo: panel.undo.emit, redo: panel.redo.emit}
        actions.update({str(n): (lambda n=n: panel.select_class(n)) for n in range(1, 10)})
        edits = ((undo, "undo the last stroke"), (redo, "paint the stroke undone again"))
        shortcuts = []
        for key, what in (*LABELING_KEYS, *edits):
            shortcut = QtWidgets.QShortcut(QtGui.QKeySequence(key), self.window)
            shortcut.setWhatsThis(what)  # the keyboard help lists it so
            shortcut.activated.connect(actions[key])
            shortcuts.append(shortcut)
        return shortcuts

    def _set_painting(self, on: bool) -> None:
        for view in self.window.views:
            view.painting = on
        if on:
            self.controller.take_brush()

    def _set_live(self, on: bool) -> None:
        self.controller.live = on

    def stroke(self, view, points: list[tuple[int, int]]) -> None:
        """A whole stroke through ``points`` of ``view`` with the panel's class and brush."""
        self.controller.stroke(tuple(self.window.model.position), view.rows_axis, view.cols_axis, points,
                               self.panel.radius(), self.panel.label())

    def begin_stroke(self, view, row: int, col: int) -> None:
        """The mouse went down on (``row``, ``col``) of ``view``: a stroke with the panel's class and brush
        starts there, and is painted as the mouse moves."""
        self.controller.begin_stroke(tuple(self.window.model.position), view.rows_axis, view.cols_axis,
                                     self.panel.radius(), self.panel.label())
        self.controller.stroke_to(row, col)

    def _training_wanted(self) -> None:
        """Train once no other stroke follows for a moment; meanwhile the workers stop prefetching under the
        classifier about to be replaced."""
        self.timer.start()
        if self.window.loader is not None and self.document is self.window.document:
            self.window.loader.drop_prefetch()

    def _moved(self, _axis: str) -> None:
        self.repaint()

    def _layer_changed(self, name: str) -> None:
        if name == LABELS:
            self.repaint()

    def _classes_changed(self) -> None:
        self.panel.set_classes(self.controller.names, self.controller.colors)
        self.window.show_classes()
        self.repaint()

    def _renew(self) -> None:
        if self.window.loader is not None and self.document is self.window.document:
            self.window.loader.renew()

    def repaint(self, within: Roi | None = None) -> None:
        """The labels overlay of every view, for the current slice and time, as the Labels layer says; only
        inside ``within`` (tzyx) when given (where a stroke being painted went)."""
        layer = self.window.model.layer(LABELS)
        for view in self.window.views:
            paint_labels(view, self.controller.store, self.window.model.position, self.controller.colors,
                         layer.opacity, within)
            view.show_overlay(LABELS, layer.visible)

    # -- dialogs --------------------------------------------------------------------------------------
    def choose_features(self) -> FeatureDialog:
        """Show the feature selection dialog; its OK trains with the features chosen."""
        dialog = FeatureDialog(self.document.project.features, self.document.source.spatial_shape[1:], self.window)
        dialog.accepted.connect(lambda: self.controller.set_features(dialog.selection()))
        dialog.open()
        return dialog

    def edit_class(self, action: str) -> None:
        """Add a class, or rename, recolour or delete the selected one (asking the user how)."""
        label = self.panel.label()
        names, colors = self.controller.names, self.controller.colors
        if action != "add" and label == ERASER:
            self.controller.message.emit("select a class first")
        elif action == "add":
            self.add_class()
        elif action == "rename":
            name, ok = QtWidgets.QInputDialog.getText(self.window, "Rename class", "Name", text=names[label - 1])
            if ok:
                self.controller.rename_class(label, name)
        elif action == "colour":
            color = QtWidgets.QColorDialog.getColor(QtGui.QColor(*colors[label - 1]), self.window)
            if color.isValid():
                self.controller.recolour_class(label, (color.red(), color.green(), color.blue()))
        elif action == "delete" and self._confirm_delete(label):
            self.controller.delete_class(label)

    def add_class(self) -> None:
        """Add a class and paint with it, as ilastik does (the eraser, if it was on, is put down)."""
        count = len(self.controller.names)
        self.controller.add_class()
        if len(self.controller.names) > count:
            self.panel.select_class(len(self.controller.names))
            self.panel.paint.setChecked(True)

    def _confirm_delete(self, label: int) -> bool:
        if not self.window.interactive:
            return True
        name = self.controller.names[label - 1]
        return QtWidgets.QMessageBox.question(self.window, "Delete class", f"Delete class {name!r} and all its "
                                              "labels? This cannot be undone.") == QtWidgets.QMessageBox.Yes

    def may_discard(self, interactive: bool, doing: str, then: Callable[[], None]) -> bool:
        """True if ``doing`` (quitting, opening another project) may go on now: nothing is unsaved, or the
        user discards it (their journal too). False if the user cancels, or chooses to save first: ``then``
        is called once the save succeeded; a failed save is shown and nothing more happens."""
        if not self.controller.dirty or not interactive:
            return True
        box = QtWidgets.QMessageBox(QtWidgets.QMessageBox.Warning, "ilastik-desktop",
                                    f"Labels, classes or thresholds are unsaved. Save them before {doing}?",
                                    QtWidgets.QMessageBox.Save | QtWidgets.QMessageBox.Discard
                                    | QtWidgets.QMessageBox.Cancel, self.window)
        box.setDefaultButton(QtWidgets.QMessageBox.Save)
        answer = box.exec()
        if answer == QtWidgets.QMessageBox.Discard:
            self.controller.discard_unsaved()
            return True
        if answer == QtWidgets.QMessageBox.Save:
            future = self.controller.save(self.window.threshold_panel.settings())
            # after the controller's own report of the save (posted first), on the GUI thread
            future.add_done_callback(lambda f: self.window.bridge.post(self._saved_then, f.exception(), then))
        return False

    def _saved_then(self, error: BaseException | None, then: Callable[[], None]) -> None:
        if error is None:
            then()
        else:
            QtWidgets.QMessageBox.critical(self.window, "ilastik-desktop", f"The labels were not saved: {error}")

    def close(self) -> None:
        """Stop training and wait for a running training or save; its keys leave the window."""
        for shortcut in self.shortcuts:
            shortcut.setEnabled(False)
            shortcut.deleteLater()
        self.timer.stop()
        self.controller.close()
        for signal in (self.controller.message, self.controller.trained, self.controller.saved, self.controller.renamed,
                       self.controller.labels_changed, self.controller.labels_painted, self.controller.classes_changed,
                       self.controller.pipeline_changed, self.controller.training_wanted,
                       self.controller.lanes_changed, self.controller.lane_shown):
            signal.disconnect()  # results posted before closing find no widget of a closed project
        # once the window has let go of the project: its garbage, kept out of collections with the trainer's
        # objects, is collected (a pause while switching projects rather than while labelling)
        QtCore.QTimer.singleShot(0, collect_frozen_garbage)


def _standard(key: QtGui.QKeySequence.StandardKey) -> str:
    """The platform's keys for a standard action (Ctrl+Z for undo)."""
    return QtGui.QKeySequence(key).toString()
