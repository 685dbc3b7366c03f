"""A project's lanes (its images), without Qt: each lane's raw data, painted labels and the cached features of
its labelled blocks, loaded in the background; images added as new lanes; a lane's document (its gateway) made
when the lane is first shown.

Every lane of the project is loaded as soon as the lanes are made (its raw data opened, its labels read), so
that training learns from the labels of all of them. A lane whose raw data does not open is left out, and
its labels stay in the project as they were.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from backend.compute.features import FeatureSet
from backend.compute.pipeline import Pipeline
from backend.config import TrainingConfig
from backend.distributed.executor import Executor
from backend.errors import DataError
from backend.io.dataset import nickname_of, open_lane
from backend.io.label_journal_format import JournalContents
from backend.io.project import Project, RawDataInfo
from backend.io.project_writer import LaneLabels, RawInput, label_block
from backend.io.sources import DataSource, open_source
from backend.io.training import label_blocks
from backend.service.gateway import Gateway
from backend.service.labels import LabelStore
from backend.service.live_training import TrainingSession
from backend.service.rendering import raw_display_range
from ilastik_desktop.runtime.document import Document

Recorder = Callable[[int, dict], None]  # told (lane, {block index: labels or None}) of labels changed


@dataclass
class Lane:
    """One image of the project: its raw data, labels, the features of its labels (made when training needs
    them), the raw data entry to write if it was added in the app, and its document once shown."""

    index: int
    nickname: str
    source: DataSource
    store: LabelStore
    raw_input: RawInput | None = None
    session: TrainingSession | None = None
    document: Document | None = None
    pending: set = dataclasses.field(default_factory=set)  # blocks touched before its session was made

    def labels(self) -> LaneLabels:
        """The lane's labels as they are now, to save."""
        blocks = [label_block(roi, labels.copy(), self.source.axes) for _, roi, labels in self.store.labelled()]
        return LaneLabels(self.index, self.source.axes, blocks, self.raw_input)


class ProjectLanes:
    """The lanes of the project shown in ``document`` (that lane is loaded from it); see the module docstring.
    ``make_gateway(source, pipeline)`` makes the gateway of a lane shown (off the caller's thread)."""

    def __init__(self, document: Document, features: FeatureSet, executor: Executor | None,
                 config: TrainingConfig = TrainingConfig(),
                 make_gateway: Callable[[DataSource, Pipeline], Gateway] | None = None):
        self.features, self.executor, self.config, self.make_gateway = features, executor, config, make_gateway
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lanes")
        self._sessions = threading.Lock()  # sessions are made on the training thread, touched on the owner's
        project, index = document.project, document.lane
        shown = Lane(index, project.lanes[index].nickname, document.source, document.labels, document=document)
        self.futures: list[Future] = []
        for i in range(len(project.lanes)):
            if i == index:
                future: Future = Future()
                future.set_result(shown)
                self.futures.append(future)
            else:
                self.futures.append(self.pool.submit(self._load, project, i))

    def __len__(self) -> int:
        return len(self.futures)

    def _load(self, project: Project, index: int) -> Lane:
        source = open_lane(project, index)
        store = LabelStore.from_blocks(source.spatial_shape, label_blocks(project, source, index),
                                       self.config.undo_steps)
        return Lane(index, project.lanes[index].nickname, source, store)

    def loaded(self, wait: bool = False) -> list[Lane]:
        """The lanes loaded (all of them, waiting for those still loading, if ``wait``); failed ones left out."""
        lanes = []
        for future in self.futures:
            if future.cancelled() or not (wait or future.done()):
                continue
            if future.exception() is None:
                lanes.append(future.result())
        return lanes

    def failures(self) -> list[str]:
        """Why lanes could not be loaded, one line each (only for lanes done loading)."""
        return [f"lane {i}: {f.exception()}" for i, f in enumerate(self.futures)
                if f.done() and not f.cancelled() and f.exception()]

    def not_ready(self) -> list[str]:
        """Each lane still loading or that could not be loaded, in words (empty once every lane is loaded)."""
        return [f"lane {i} is still loading" if not f.done() else f"lane {i} was not loaded (closing)"
                if f.cancelled() else f"lane {i} could not be loaded ({f.exception()})"
                for i, f in enumerate(self.futures) if not f.done() or f.cancelled() or f.exception()]

    def sessions(self) -> list[TrainingSession]:
        """Every loaded lane's training session for the current features (waits for lanes still loading)."""
        sessions = []
        for lane in self.loaded(wait=True):
            with self._sessions:  # a stroke touching the lane meanwhile is not lost between snapshot and session
                if lane.session is None or lane.session.features is not self.features:
                    lane.session = TrainingSession(lane.source, self.features, lane.store, self.executor,
                                                   self.config.features_timeout_s)
                    lane.session.touched(lane.pending)
                    lane.pending = set()
            sessions.append(lane.session)
        return sessions

    def touched(self, index: int, blocks: set) -> None:
        """Lane ``index``'s labels changed in ``blocks``."""
        lane = self.futures[index].result()
        with self._sessions:
            if lane.session is not None and lane.session.features is self.features:
                lane.session.touched(blocks)
            else:  # the session the next training makes takes them
                lane.pending |= set(blocks)

    def remove_class(self, label: int, record: Recorder | None = None) -> None:
        """Delete class ``label`` from every lane's labels (all loaded: see :meth:`not_ready`);
        ``record(lane, blocks)`` is told the blocks renumbered."""
        for future in self.futures:
            if future.done() and not future.cancelled() and future.exception() is None:
                lane = future.result()
                blocks = lane.store.remove_class(label)
                self.touched(lane.index, blocks)
                if record is not None and blocks:
                    record(lane.index, {index: lane.store.blocks.get(index) for index in blocks})

    def put_blocks(self, index: int, blocks: dict, record: Recorder | None = None) -> None:
        """Set lane ``index``'s label blocks (block index -> labels, None: empty), once it is loaded;
        ``record(lane, blocks)`` is told them."""
        future = self.futures[index]
        if future.done():
            self._put_blocks(future, blocks, record)
        else:
            self.pool.submit(self._put_blocks, future, blocks, record)

    def restore(self, journal: JournalContents, reopen: Callable[[str, str | None, dict], None]) -> None:
        """Put the labels of ``journal`` into the project's lanes (once loaded); for each lane added since the
        save, in the order they were added, ``reopen(image, axes, blocks)``."""
        known = len(self)
        for lane in sorted({lane for lane, _ in journal.blocks} | set(journal.lanes)):
            blocks = journal.lane_blocks(lane)
            if lane < known:
                self.put_blocks(lane, blocks)
            elif lane in journal.lanes:
                reopen(*journal.lanes[lane], blocks)

    def _put_blocks(self, future: Future, blocks: dict, record: Recorder | None) -> None:
        if future.cancelled() or future.exception() is not None or not blocks:
            return
        lane = future.result()
        for index, labels in blocks.items():
            if labels is None:
                lane.store.blocks.pop(index, None)
            else:
                lane.store.blocks[index] = labels
        self.touched(lane.index, set(blocks))
        if record is not None:
            record(lane.index, blocks)

    def open_image(self, image: str, axes: str | None) -> Future:
        """Open ``image`` (read with ``axes``, else guessed) in the background, to add it as a lane; the future
        fails with DataError if it does not fit the project's first lane."""
        return self.pool.submit(self._open_image, self.futures[0], image, axes)

    @staticmethod
    def _open_image(first: Future, image: str, axes: str | None) -> DataSource:
        source = open_source(image, axes)
        check_fits(source, first.result().source)
        return source

    def append(self, project: Project, image: str, source: DataSource) -> Project:
        """Make the opened ``image`` the project's next lane, unlabelled; the project recording it."""
        path = os.path.relpath(os.path.abspath(image), project.directory)
        nickname = nickname_of(image)
        lane = Lane(len(self.futures), nickname, source, LabelStore(source.spatial_shape, self.config.undo_steps),
                    RawInput(path, source.axes, source.native_shape, nickname))
        future: Future = Future()
        future.set_result(lane)
        self.futures.append(future)
        info = RawDataInfo(path, "FileSystem", source.axes, nickname, "", source.native_shape)
        return dataclasses.replace(project, lanes=project.lanes + (info,))

    def document(self, project: Project, index: int, pipeline: Pipeline) -> Future:
        """Lane ``index``'s document (made in the background the first time, computing with ``pipeline``)."""
        return self.pool.submit(self._document, project, index, pipeline)

    def _document(self, project: Project, index: int, pipeline: Pipeline) -> Document:
        lane = self.futures[index].result()
        if lane.document is None:
            if self.make_gateway is None:
                raise DataError(f"lane {index}: nothing to compute it with")
            gateway = self.make_gateway(lane.source, pipeline)
            lane.document = Document(project, lane.source, pipeline, gateway, lane.store,
                                     raw_display_range(lane.source), index)
        return lane.document

    def close(self, keep: Document | None = None) -> None:
        """Wait for the loading in progress, then close the lanes' documents (but ``keep``, the one shown)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        for lane in self.loaded():
            if lane.document is not None and lane.document is not keep:
                lane.document.close()


def check_fits(source: DataSource, first: DataSource) -> None:
    """DataError unless ``source`` can be another lane beside ``first``: as many channels, both 2D or both 3D."""
    problems = []
    if (source.spatial_shape[1] > 1) != (first.spatial_shape[1] > 1):
        problems.append(f"it is {'3D' if source.spatial_shape[1] > 1 else '2D'} but the project's images are "
                        f"{'3D' if first.spatial_shape[1] > 1 else '2D'}")
    if source.channels != first.channels:
        problems.append(f"it has {source.channels} channels but the project's images have {first.channels}")
    if problems:
        raise DataError(f"{source.description}: cannot be added to the project: " + "; ".join(problems))

