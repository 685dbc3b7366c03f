"""Training a project's classifier from the labels painted on its lanes, without Qt.

Strokes, undo and redo go into the shown lane's label store; with live training on, each change asks for a training
(``training_wanted``: the window debounces it); one forest is trained off the caller's thread from the labelled
blocks' features of every lane (computed on the workers), and the shown document's gateway then uses it (another
lane's, once shown); a training that a newer one made outdated stops between chunks of trees. Images are added as
lanes, and any lane is shown with its labels and undo history kept. Classes are added, renamed, recoloured and
deleted; Save writes classes, labels, features, forest and thresholds into the
project, atomically, in the background. Until then, labels, class edits and added lanes are journalled beside the
project, and :meth:`TrainingController.restore` takes them back after a crash.

Results come back through ``call_soon`` (the window passes its GUI bridge), so the controller's state is only ever
changed on its owner's thread; signals are emitted there too.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from psygnal import Signal

from backend.compute.threshold import ThresholdSettings
from backend.config import TrainingConfig
from backend.distributed.executor import Executor
from backend.errors import UserError
from backend.io.label_journal import LabelJournal
from backend.io.label_journal_format import JournalContents
from backend.io.project import Classifier, FeatureSelection
from backend.io.project_pipeline import build_pipeline, feature_set
from backend.io.project_writer import Training, save_training
from backend.io.sources import DataSource
from backend.io.training import TrainingStopped, load_trainer
from backend.private_files import config_dir
from backend.service import label_classes
from backend.service.gateway import Gateway
from backend.service.labels import LabelStore
from ilastik_desktop.runtime.document import Document
from ilastik_desktop.runtime.lanes import ProjectLanes
from ilastik_desktop.runtime.training_run import Trained, train_lanes

log = logging.getLogger(__name__)


def call_inline(function: Callable, *args) -> None:
    """Run ``function(*args)`` now, on the calling thread (the default ``call_soon``)."""
    function(*args)


class TrainingController:
    """Labels, classes and classifier of a project's lanes, one of them shown (``document``); see the module
    docstring. ``make_gateway(source, pipeline)`` makes the gateways of the other lanes when they are shown."""

    message = Signal(str)  # what happened, in words (trained, failed, saved, refused); "" after a class edit
    trained = Signal(str)  # a training's outcome (also sent as ``message``)
    saved = Signal(str)  # a save's outcome (also sent as ``message``)
    renamed = Signal(str)  # Save As: the project now lives elsewhere; the old path
    classes_changed = Signal()  # names or colours changed, or a class was added or deleted
    labels_changed = Signal()  # the painted labels changed
    labels_painted = Signal(object)  # a stroke being painted changed labels in this tzyx Roi (ends: labels_changed)
    pipeline_changed = Signal()  # the gateway computes with another pipeline: overlays need renewing
    training_wanted = Signal()  # live training asks for a training soon
    lanes_changed = Signal()  # a lane was added, or showing one failed: list the lanes again
    lane_shown = Signal(object)  # the Document of the lane now shown

    def __init__(self, document: Document, executor: Executor | None, config: TrainingConfig = TrainingConfig(),
                 call_soon: Callable[..., None] = call_inline,
                 make_gateway: Callable[[DataSource, object], Gateway] | None = None):
        self.document, self.executor, self.config, self.call_soon = document, executor, config, call_soon
        self.lanes = ProjectLanes(document, document.pipeline.features, executor, config, make_gateway)
        # unsaved labels, classes and lanes, journalled beside the project so that a crash does not lose them
        self.journal = LabelJournal(document.project.path, config_dir(), config.journal_sync_s,
                                    lambda text: call_soon(self.message.emit, text))
        self.classifier: Classifier | None = document.project.classifier
        self.rows = 0
        self.dirty = False  # labels or classes changed since the last save
        self.stale = False  # the classifier predates a deleted class or new features: not saved until retrained
        self.live = True
        self.closed = False
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="training")
        self._loader: ThreadPoolExecutor | None = None  # imports the trainer while a first training can start
        self._wanted_lane = document.lane
        self._training: Future | None = None
        self._stop: threading.Event | None = None  # set: the latest training is outdated

    @property
    def store(self) -> LabelStore:
        """The shown lane's labels."""
        return self.document.labels

    @property
    def lane_names(self) -> list[str]:
        """The lanes' nicknames, lane 0 first."""
        return [info.nickname for info in self.document.project.lanes]

    @property
    def colors(self) -> list[tuple[int, int, int]]:
        """The classes' colours, class 1 first."""
        return [tuple(c) for c in self.document.project.label_colors]

    @property
    def names(self) -> list[str]:
        """The classes' names, class 1 first."""
        return list(self.document.project.label_names)

    def take_brush(self) -> None:
        """The user means to label: load the trainer in the background before the first stroke (not at
        opening: there it slowed the first overlay, 0.55 -> 0.72-0.96 s)."""
        if self._loader is None:
            self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainer-import")
            self._loader.submit(load_trainer)

    # -- labels ---------------------------------------------------------------------------------------
    def stroke(self, position: tuple[int, int, int, int], rows_axis: str, cols_axis: str,
               points: list[tuple[int, int]], radius: int, label: int) -> None:
        """A finished stroke through ``points`` of a view (its rows and columns axes) at ``position``."""
        self._changed(self.store.stroke(position, rows_axis, cols_axis, points, radius, label))

    def begin_stroke(self, position: tuple[int, int, int, int], rows_axis: str, cols_axis: str, radius: int,
                     label: int) -> None:
        """A stroke starts in a view (its rows and columns axes) at ``position``: painted as the mouse moves
        (:meth:`stroke_to`), one undo step, and one training once it ends (:meth:`end_stroke`)."""
        self.store.begin_stroke(position, rows_axis, cols_axis, radius, label)

    def stroke_to(self, row: int, col: int) -> None:
        """The stroke goes on to (``row``, ``col``) of its view; ``labels_painted`` says where it painted."""
        painted = self.store.stroke_to(row, col)
        if painted is not None:
            self.labels_painted.emit(painted)

    def end_stroke(self) -> None:
        """The stroke ends (the mouse button was released)."""
        self._changed(self.store.end_stroke())

    def undo(self) -> None:
        """Take the last stroke back."""
        self._changed(self.store.undo())

    def redo(self) -> None:
        """Paint the last stroke taken back again."""
        self._changed(self.store.redo())

    def _changed(self, blocks: set) -> None:
        if not blocks:
            return
        lane = self.document.lane
        self.journal.record_blocks(lane, {index: self.store.blocks.get(index) for index in blocks})
        self.lanes.touched(lane, blocks)
        self.dirty = True
        self.labels_changed.emit()
        if self.live:
            self.training_wanted.emit()

    # -- features -------------------------------------------------------------------------------------
    def set_features(self, selection: FeatureSelection) -> None:
        """Learn from ``selection`` from now on: the labelled blocks' features are computed anew, and the
        overlays keep the current classifier until one trained on the new features replaces it."""
        project = dataclasses.replace(self.document.project, features=selection)
        source = self.document.source
        try:
            features = feature_set(project, source.channels, source.shape[1] > 1)
        except UserError as exc:
            self.message.emit(str(exc))
            return
        self.document.project = project
        self.lanes.features = features  # every lane's features are computed anew at the next training
        self.stale = self.dirty = True
        if self.live:
            self.train()
        else:
            self.message.emit("features changed: train to update the overlays")

    # -- classes --------------------------------------------------------------------------------------
    def add_class(self) -> None:
        """One more class, as ilastik names and colours it; the current classifier keeps working."""
        if self._edit_classes(label_classes.add_class):
            self.use_pipeline()  # one more probability channel

    def rename_class(self, label: int, name: str) -> None:
        """Call class ``label`` (from 1) ``name``."""
        self._edit_classes(label_classes.rename_class, label, name)

    def recolour_class(self, label: int, color: tuple[int, int, int]) -> None:
        """Show class ``label`` (from 1) in ``color``."""
        self._edit_classes(label_classes.recolour_class, label, color)

    def delete_class(self, label: int) -> None:
        """Delete class ``label`` (from 1) and its labels on every lane; the overlays drop it until the next
        training. Refused while a lane is loading or could not be loaded (its labels would keep the old numbers)."""
        waiting = self.lanes.not_ready()
        if waiting:
            self.message.emit(f"cannot delete a class now: {'; '.join(waiting)}")
            return
        if not self._edit_classes(label_classes.delete_class, label):
            return
        self.lanes.remove_class(label, self.journal.record_blocks)
        self.labels_changed.emit()
        if self.classifier is not None:  # its other classes stay on screen, renumbered, until it is retrained
            known = tuple(0 if k == label else k - (k > label) for k in self.classifier.known_labels)
            self.classifier, self.stale = dataclasses.replace(self.classifier, known_labels=known), True
        self.use_pipeline()
        if self.live:
            self.training_wanted.emit()

    def _edit_classes(self, change, *args) -> bool:
        try:
            project = change(self.document.project, *args)
        except UserError as exc:
            self.message.emit(str(exc))
            return False
        self.document.project = project
        self.dirty = True
        self.journal.record_classes(project.label_names, project.label_colors)
        self.classes_changed.emit()
        self.message.emit("")  # an earlier refusal no longer applies
        return True

    def use_pipeline(self) -> None:
        """The current classifier over the current classes, on the document's gateway."""
        source = self.document.source
        try:
            pipeline = build_pipeline(self.document.project, source.channels, source.shape[1] > 1, self.classifier,
                                      require_classifier=False)
        except UserError:  # the classifier predates a change of features: the next training fits again
            self.message.emit("the classifier on screen was trained on other features: train to update the overlays")
            return
        self._set_pipeline(pipeline)

    def _set_pipeline(self, pipeline) -> None:
        self.document.pipeline = pipeline
        self.document.gateway.set_pipeline(pipeline)  # new block keys: nothing of the old classifier is reused
        self.pipeline_changed.emit()

    # -- training -------------------------------------------------------------------------------------
    def train(self) -> bool:
        """Train in the background from the labels as they are now. A training still running was given labels
        that changed since: it stops at its next check (between chunks of trees) and this one starts then."""
        if self._stop is not None:
            self._stop.set()
        stop = self._stop = threading.Event()
        self.message.emit("training ...")
        self._training = self.pool.submit(self._train, stop)
        return True

    def _train(self, stop: threading.Event) -> None:
        try:
            if not stop.is_set():  # else replaced before it started
                trained = train_lanes(self.lanes, self.document, self.executor, self.config.chunk_trees, stop.is_set)
                self.call_soon(self._use, trained)
        except TrainingStopped:
            return  # the training that replaced it reports
        except UserError as exc:
            self.call_soon(self._report_training, str(exc))
        except Exception as exc:  # shown in the panel rather than lost
            log.exception("training failed")
            self.call_soon(self._report_training, f"training failed: {type(exc).__name__}: {exc}")

    def _use(self, trained: Trained) -> None:
        try:
            if self.closed:
                return  # the project was closed meanwhile
            self.classifier, self.rows, self.stale = trained.classifier, trained.rows, False
            self._set_pipeline(trained.pipeline)
        finally:
            if trained.fingerprint is not None:
                self.executor.remove_pipeline(trained.fingerprint)  # the reference the training took
        self._report_training(f"trained {trained.classifier.tree_count} trees on {trained.rows} labelled voxels"
                              f"{trained.how}")

    def _report_training(self, text: str) -> None:
        if not self.closed:
            self.message.emit(text)
            self.trained.emit(text)

    # -- saving ---------------------------------------------------------------------------------------
    def save(self, threshold: ThresholdSettings, target: str | None = None) -> Future:
        """Write the classes, labels, classifier and ``threshold`` into the project, or into a copy at ``target``
        that becomes the project (Save As); in the background, atomically. The future resolves when saved."""
        project = self.document.project
        lanes = self.lanes.loaded()
        training = Training(project.features, project.label_names, project.label_colors,
                            [lane.labels() for lane in lanes], None if self.stale else self.classifier, self.rows,
                            threshold)
        token = self.journal.saving()
        future = self.pool.submit(save_training, project.path, training, target)
        path = target or project.path
        future.add_done_callback(lambda f: self.call_soon(self._saved, path, f.exception(), lanes, token))
        return future

    def _saved(self, path: str, error: BaseException | None, lanes: list, token: int) -> None:
        if error is None and not self.closed:
            self.dirty = False
            self.journal.saved(token, path)
            for lane in lanes:
                lane.raw_input = None  # the project records it now
            old = self.document.project.path
            if path != old:  # Save As: the copy is the project from now on
                self.document.project = dataclasses.replace(self.document.project, path=path)
                self.renamed.emit(old)
        text = f"saved {path}" if error is None else f"could not save {path}: {error}"
        self.message.emit(text)
        self.saved.emit(text)

    # -- lanes ----------------------------------------------------------------------------------------
    def add_images(self, images: list[tuple[str, str | None]]) -> None:
        """Add each (image, axes or None to guess them) as a lane, opened in the background; ``lanes_changed``
        once each is added, or ``message`` saying why it was not."""
        for image, axes in images:
            future = self.lanes.open_image(image, axes)
            future.add_done_callback(lambda f, i=image: self.call_soon(self._image_opened, i, f))

    def _image_opened(self, image: str, future: Future, restored: dict | None = None) -> None:
        if self.closed:
            return
        if future.exception() is not None:
            self.message.emit(str(future.exception()))
            return
        source = future.result()
        self.document.project = self.lanes.append(self.document.project, image, source)
        index = len(self.lanes) - 1
        self.journal.record_lane(index, image, source.axes)
        if restored:  # the labels an earlier session painted on this lane
            self.lanes.put_blocks(index, restored, self.journal.record_blocks)
        self.dirty = True
        self.message.emit(f"added lane {index}: {self.lane_names[-1]}")
        self.lanes_changed.emit()

    def show_lane(self, index: int) -> None:
        """Show lane ``index`` (its document made in the background the first time): ``lane_shown``."""
        self._wanted_lane = index  # the last choice wins over lanes still being made
        if index == self.document.lane:
            return
        future = self.lanes.document(self.document.project, index, self.document.pipeline)
        future.add_done_callback(lambda f: self.call_soon(self._lane_ready, f))

    def _lane_ready(self, future: Future) -> None:
        if self.closed or (future.exception() is None and future.result().lane != self._wanted_lane):
            return
        if future.exception() is not None:
            self.message.emit(f"could not show the lane: {future.exception()}")
            self.lanes_changed.emit()  # the lane switcher names the lane shown again
            return
        document, pipeline = future.result(), self.document.pipeline
        document.project = self.document.project  # the classes, features and lanes as edited since
        if document.pipeline is not pipeline:  # trained or changed while the lane was not shown
            document.pipeline = pipeline
            document.gateway.set_pipeline(pipeline)
        self.document = document
        self.lane_shown.emit(document)

    # -- the journal ------------------------------------------------------------------------------------
    def restore(self, journal: JournalContents) -> None:
        """Take back the labels, classes and added lanes of ``journal`` (left by a session that ended without
        saving); lanes still loading get their labels once loaded, added lanes once opened again."""
        self.journal.restored(journal)  # first: the records below follow them in the journal
        if journal.classes is not None:
            names, colors = journal.classes
            count = len(self.names)
            self._edit_classes(label_classes.with_classes, tuple(names), tuple(colors))
            if len(names) != count:
                self._restored_class_count(len(names))
        self.lanes.restore(journal, self._reopen)
        self.dirty = True
        self.labels_changed.emit()
        if self.live:
            self.training_wanted.emit()

    def _reopen(self, image: str, axes: str | None, blocks: dict) -> None:
        future = self.lanes.open_image(image, axes)
        future.add_done_callback(lambda f: self.call_soon(self._image_opened, image, f, blocks))

    def _restored_class_count(self, count: int) -> None:
        if self.classifier is not None:  # classes it knows beyond the restored ones show as none until retrained
            known = tuple(k if k <= count else 0 for k in self.classifier.known_labels)
            self.classifier, self.stale = dataclasses.replace(self.classifier, known_labels=known), True
        self.use_pipeline()

    def discard_unsaved(self) -> None:
        """The user discards the unsaved labels: their journal goes too."""
        self.journal.clear()

    def close(self) -> None:
        """Stop: wait for a running training or save (their results are dropped); close the lanes' documents
        but the one shown (the window's); close the journal as it is (kept for the next opening unless the
        labels were saved or discarded)."""
        self.closed = True
        self.pool.shutdown(wait=True, cancel_futures=False)
        if self._loader is not None:
            self._loader.shutdown(wait=True)
        self.lanes.close(keep=self.document)
        self.journal.close()
