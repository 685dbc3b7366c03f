"""Training in the window: strokes from the views into the label store, the labels overlay, a forest
trained off the GUI thread after each stroke (debounced), the overlays recomputed under the new
classifier, and Save writing labels and forest into the project."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

from PyQt5 import QtCore, QtWidgets

from backend.errors import UserError
from backend.io.project_pipeline import build_pipeline
from backend.io.project_writer import label_block, save_training
from backend.service.live_training import TrainingSession
from ilastik_desktop.training_panel import TrainingPanel
from viewer.labels_layer import paint_labels

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
        self.session = TrainingSession(source, document.pipeline.features, self.store)
        self.colors = [tuple(c) for c in project.label_colors]
        self.panel = TrainingPanel(project.label_names, self.colors)
        self.classifier, self.rows, self.dirty = project.classifier, 0, False
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="training")
        self._training: Future | None = None
        self.timer = QtCore.QTimer(self, singleShot=True, interval=DEBOUNCE_MS)
        self.timer.timeout.connect(self.train)
        self.panel.painting.connect(self._set_painting)
        self.panel.undo.connect(lambda: self._changed(self.store.undo()))
        self.panel.redo.connect(lambda: self._changed(self.store.redo()))
        self.panel.train.connect(self.train)
        for view in window.views:
            view.stroked.connect(lambda points, v=view: self.stroke(v, points))
        window.model.position_changed.connect(lambda _axis: self.repaint())
        self.repaint()

    def _set_painting(self, on: bool) -> None:
        for view in self.window.views:
            view.painting = on

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

    def repaint(self) -> None:
        """The labels overlay of every view, for the current slice and time."""
        for view in self.window.views:
            paint_labels(view, self.store, self.window.model.position, self.colors)

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
        self.classifier, self.rows = classifier, rows
        self.document.pipeline = pipeline
        self.document.gateway.set_pipeline(pipeline)  # new block keys: nothing of the old classifier is reused
        self.window.loader.renew()
        self._report(f"trained {classifier.tree_count} trees on {rows} labelled voxels in {seconds:.1f} s")

    def _report(self, message: str) -> None:
        self.panel.status.setText(message)
        self.trained.emit(message)

    def save(self) -> None:
        """Write the labels and the classifier into the project (in the background, atomically)."""
        source = self.document.source
        blocks = [label_block(roi, labels.copy(), source.axes) for _, roi, labels in self.store.labelled()]
        path = self.document.project.path
        future = self.pool.submit(save_training, path, 0, source.axes, blocks, self.classifier, self.rows)
        future.add_done_callback(lambda f: self.window.bridge.post(self._saved, path, f.exception()))

    def _saved(self, path: str, error: BaseException | None) -> None:
        if error is None:
            self.dirty = False
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
        """Stop training and wait for a running training or save."""
        self.timer.stop()
        self.pool.shutdown(wait=True, cancel_futures=False)
