"""Training in the window: strokes from the views into the label store, the labels overlay, a forest
trained off the GUI thread after each stroke (debounced), the overlays recomputed under the new
classifier, and Save writing labels and forest into the project."""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

from PyQt5 import QtCore, QtGui, QtWidgets

from backend.errors import UserError
from backend.io.project import FeatureSelection
from backend.io.project_pipeline import build_pipeline, feature_set
from backend.io.project_writer import Training, label_block, save_training
from backend.io.training import load_trainer
from backend.service import label_classes
from backend.service.live_training import TrainingSession
from ilastik_desktop._qt.dialogs.features import FeatureDialog
from ilastik_desktop._qt.panels.training import ERASER, TrainingPanel
from viewer.labels_layer import paint_labels
from viewer.model import LABELS

log = logging.getLogger(__name__)
DEBOUNCE_MS = 400  # a stroke starts training once no other stroke followed for this long


class TrainingController(QtCore.QObject):
    """Labels and training of the window's open document; ``trained`` reports each outcome in words."""

    trained = QtCore.pyqtSignal(str)
    saved = QtCore.pyqtSignal(str)

    def __init__(self, window, document, parent=None):
        super().__init__(parent)
        self.window, self.document = window, document
        project, source = document.project, document.source
        self.store = document.labels
        self.session = TrainingSession(source, document.pipeline.features, self.store, window.services.executor)
        self.colors = [tuple(c) for c in project.label_colors]
        self.panel = TrainingPanel(project.label_names, self.colors)
        self.classifier, self.rows, self.dirty = project.classifier, 0, False
        self.stale = False  # the classifier predates a deleted class or new features: not saved until retrained
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="training")
        self._trainer_loaded = False
        self._training: Future | None = None
        self.timer = QtCore.QTimer(self, singleShot=True, interval=DEBOUNCE_MS)
        self.timer.timeout.connect(self.train)
        self.panel.painting.connect(self._set_painting)
        self.panel.undo.connect(lambda: self._changed(self.store.undo()))
        self.panel.redo.connect(lambda: self._changed(self.store.redo()))
        self.panel.train.connect(self.train)
        self.panel.edit_class.connect(self.edit_class)
        self.panel.choose_features.connect(self.choose_features)
        for view in window.views:
            view.stroked.connect(lambda points, v=view: self.stroke(v, points))
        window.model.position_changed.connect(lambda _axis: self.repaint())
        window.model.layers_changed.connect(lambda name: name == LABELS and self.repaint())
        self.shortcuts = self._ilastik_keys()
        self.repaint()

    def _ilastik_keys(self) -> list[QtWidgets.QShortcut]:
        """ilastik's labeling keys, anywhere in the window: N navigate, B brush, E eraser, A add a class,
        "," and "." brush size, L live training, 1-9 choose a class."""
        panel = self.panel
        keys = {"N": lambda: panel.paint.setChecked(False), "B": panel.brush, "E": panel.erase,
                "A": self.add_class, ",": lambda: panel.step_size(-1), ".": lambda: panel.step_size(1),
                "L": panel.live.toggle}
        keys.update({str(n): (lambda n=n: panel.select_class(n)) for n in range(1, 10)})
        shortcuts = []
        for key, action in keys.items():
            shortcut = QtWidgets.QShortcut(QtGui.QKeySequence(key), self.window)
            shortcut.activated.connect(action)
            shortcuts.append(shortcut)
        return shortcuts

    def _set_painting(self, on: bool) -> None:
        for view in self.window.views:
            view.painting = on
        if on and not self._trainer_loaded:  # the user means to label: load the trainer before the first stroke
            self._trainer_loaded = True  # (not at opening: there it slowed the first overlay, 0.55 -> 0.72-0.96 s)
            self.pool.submit(load_trainer)

    def stroke(self, view, points: list[tuple[int, int]]) -> None:
        """A finished stroke in ``view`` with the panel's class and brush."""
        position = tuple(self.window.model.position)
        self._changed(self.store.stroke(position, view.rows_axis, view.cols_axis, points, self.panel.radius(),
                                        self.panel.label()))

    def _changed(self, blocks: set) -> None:
        if not blocks:
            return
        self.session.touched(blocks)
        self.dirty = True
        self.repaint()
        if self.panel.live.isChecked():
            self.timer.start()

    # -- features ---------------------------------------------------------------------------------------
    def choose_features(self) -> FeatureDialog:
        """Show the feature selection dialog; its OK trains with the features chosen."""
        dialog = FeatureDialog(self.document.project.features, self.document.source.spatial_shape[1:], self.window)
        dialog.accepted.connect(lambda: self.set_features(dialog.selection()))
        dialog.open()
        return dialog

    def set_features(self, selection: FeatureSelection) -> None:
        """Learn from ``selection`` from now on: the labelled blocks' features are computed anew, and the
        overlays keep the current classifier until one trained on the new features replaces it."""
        project = dataclasses.replace(self.document.project, features=selection)
        source = self.document.source
        try:
            features = feature_set(project, source.channels, source.shape[1] > 1)
        except UserError as exc:
            self._report(str(exc))
            return
        self.document.project = project
        self.session = TrainingSession(source, features, self.store, self.window.services.executor)
        self.stale = self.dirty = True
        if self.panel.live.isChecked():
            self.train()
        else:
            self._report("features changed: train to update the overlays")

    # -- classes ----------------------------------------------------------------------------------------
    def edit_class(self, action: str) -> None:
        """Add a class, or rename, recolour or delete the selected one (asking the user how)."""
        label = self.panel.label()
        if action != "add" and label == ERASER:
            self._report("select a class first")
        elif action == "add":
            self.add_class()
        elif action == "rename":
            name, ok = QtWidgets.QInputDialog.getText(self.window, "Rename class", "Name",
                                                      text=self.document.project.label_names[label - 1])
            if ok:
                self.rename_class(label, name)
        elif action == "colour":
            color = QtWidgets.QColorDialog.getColor(QtGui.QColor(*self.colors[label - 1]), self.window)
            if color.isValid():
                self.recolour_class(label, (color.red(), color.green(), color.blue()))
        elif action == "delete" and self._confirm_delete(label):
            self.delete_class(label)

    def _confirm_delete(self, label: int) -> bool:
        if not self.window.interactive:
            return True
        name = self.document.project.label_names[label - 1]
        return QtWidgets.QMessageBox.question(self.window, "Delete class", f"Delete class {name!r} and all its "
                                              "labels? This cannot be undone.") == QtWidgets.QMessageBox.Yes

    def add_class(self) -> None:
        """One more class, as ilastik names and colours it; the current classifier keeps working."""
        if self._edit_classes(label_classes.add_class):
            self._use_pipeline()  # one more probability channel

    def rename_class(self, label: int, name: str) -> None:
        """Call class ``label`` (from 1) ``name``."""
        self._edit_classes(label_classes.rename_class, label, name)

    def recolour_class(self, label: int, color: tuple[int, int, int]) -> None:
        """Show class ``label`` (from 1) in ``color``."""
        self._edit_classes(label_classes.recolour_class, label, color)

    def delete_class(self, label: int) -> None:
        """Delete class ``label`` (from 1) and its labels; the overlays drop it until the next training."""
        if not self._edit_classes(label_classes.delete_class, label):
            return
        self.session.touched(self.store.remove_class(label))
        if self.classifier is not None:  # its other classes stay on screen, renumbered, until it is retrained
            known = tuple(0 if k == label else k - (k > label) for k in self.classifier.known_labels)
            self.classifier, self.stale = dataclasses.replace(self.classifier, known_labels=known), True
        self._use_pipeline()
        if self.panel.live.isChecked():
            self.timer.start()

    def _edit_classes(self, change, *args) -> bool:
        try:
            project = change(self.document.project, *args)
        except UserError as exc:
            self._report(str(exc))
            return False
        self.document.project = project
        self.colors = [tuple(c) for c in project.label_colors]
        self.panel.set_classes(list(project.label_names), self.colors)
        self.dirty = True
        self.window.show_classes()
        self.repaint()
        return True

    def _use_pipeline(self) -> None:
        """The current classifier over the current classes, on the gateway and the views."""
        source = self.document.source
        try:
            self.document.pipeline = build_pipeline(self.document.project, source.channels, source.shape[1] > 1,
                                                    self.classifier, require_classifier=False)
        except UserError:  # the classifier predates a change of features: the next training fits again
            self._report("the classifier on screen was trained on other features: train to update the overlays")
            return
        self.document.gateway.set_pipeline(self.document.pipeline)
        self.window.loader.renew()

    def repaint(self) -> None:
        """The labels overlay of every view, for the current slice and time, as the Labels layer says."""
        layer = self.window.model.layer(LABELS)
        for view in self.window.views:
            paint_labels(view, self.store, self.window.model.position, self.colors, layer.opacity)
            view.show_overlay(LABELS, layer.visible)

    def train(self) -> None:
        """Train in the background (again once the running training ends, if labels changed meanwhile)."""
        if self._training is not None and not self._training.done():
            self.timer.start()
            return
        self.panel.status.setText("training ...")
        self._training = self.pool.submit(self._train)

    def _train(self) -> None:
        started = time.perf_counter()
        try:
            classifier, rows = self.session.train()
            project, source = self.document.project, self.document.source
            pipeline = build_pipeline(project, source.channels, source.shape[1] > 1, classifier)
        except UserError as exc:
            self.window.bridge.post(self._report, str(exc))
            return
        except Exception as exc:  # shown in the panel rather than lost
            log.exception("training failed")
            self.window.bridge.post(self._report, f"training failed: {type(exc).__name__}: {exc}")
            return
        seconds = time.perf_counter() - started
        self.window.bridge.post(self._use, classifier, rows, pipeline, seconds)

    def _use(self, classifier, rows: int, pipeline, seconds: float) -> None:
        if self.window.loader is None or self.document is not self.window.document:
            return  # the project was closed meanwhile
        self.classifier, self.rows, self.stale = classifier, rows, False
        self.document.pipeline = pipeline
        self.document.gateway.set_pipeline(pipeline)  # new block keys: nothing of the old classifier is reused
        self.window.loader.renew()
        self._report(f"trained {classifier.tree_count} trees on {rows} labelled voxels in {seconds:.1f} s")

    def _report(self, message: str) -> None:
        self.panel.status.setText(message)
        self.trained.emit(message)

    def save(self, target: str | None = None) -> None:
        """Write the classes, labels and classifier into the project, or into a copy at ``target`` that the
        window then shows (Save As); in the background, atomically."""
        source, project = self.document.source, self.document.project
        blocks = [label_block(roi, labels.copy(), source.axes) for _, roi, labels in self.store.labelled()]
        training = Training(project.features, project.label_names, project.label_colors, 0, source.axes, blocks,
                            None if self.stale else self.classifier, self.rows, self.window.threshold_panel.settings())
        future = self.pool.submit(save_training, project.path, training, target)
        path = target or project.path
        future.add_done_callback(lambda f: self.window.bridge.post(self._saved, path, f.exception()))

    def _saved(self, path: str, error: BaseException | None) -> None:
        if error is None:
            self.dirty = False
            old = self.document.project.path
            if path != old:  # Save As: the copy is the project from now on
                self.document.project = dataclasses.replace(self.document.project, path=path)
                self.window.project_renamed(old)
        message = f"saved {path}" if error is None else f"could not save {path}: {error}"
        self.panel.status.setText(message)
        self.saved.emit(message)

    def may_discard(self, interactive: bool, doing: str) -> bool:
        """True unless labels are unsaved and the user, asked, keeps them (``doing``: what would discard them)."""
        if not self.dirty or not interactive:
            return True
        answer = QtWidgets.QMessageBox.question(self.window, "ilastik-desktop",
                                                f"The labels changed since they were saved. {doing} without saving?")
        return answer == QtWidgets.QMessageBox.Yes

    def close(self) -> None:
        """Stop training and wait for a running training or save; its keys leave the window."""
        for shortcut in self.shortcuts:
            shortcut.setEnabled(False)
            shortcut.deleteLater()
        self.timer.stop()
        self.pool.shutdown(wait=True, cancel_futures=False)
