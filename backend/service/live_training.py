"""Training in the app: the features of labelled voxels cached per label block, recomputed only for the
blocks a stroke touched (on the workers, when an executor is given), and a forest trained from all of them
(as ilastik's Live Update does); one forest from the labels of several lanes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np

from backend.compute.features import FeatureSet
from backend.compute.pipeline import BlockTask, Pipeline
from backend.config import TrainingConfig
from backend.distributed.executor import Executor
from backend.errors import UserError
from backend.io.project import Classifier
from backend.io.sources import DataSource
from backend.io.training import concatenate_rows, label_frames, labelled_rows, train_classifier
from backend.service.gateway import VISIBLE
from backend.service.labels import LabelStore


class TrainingSession:
    """Trains classifiers from a :class:`LabelStore` over one image with one feature selection; the
    features of labelled blocks are computed by ``executor`` (the workers) if given, else here; a block's
    features not back within ``features_timeout_s`` fail the training with a message."""

    def __init__(self, source: DataSource, features: FeatureSet, labels: LabelStore, executor: Executor | None = None,
                 features_timeout_s: float = TrainingConfig().features_timeout_s):
        self.source, self.features, self.labels, self.executor = source, features, labels, executor
        self.features_timeout_s = features_timeout_s
        self._fingerprint: str | None = None  # the features' pipeline, registered on first use (off the GUI thread)
        self._samples: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._dirty: set[tuple[int, ...]] = set(labels.blocks)
        self.blocks_computed = 0  # label blocks whose features were computed (for tests and the status)

    def touched(self, blocks: set[tuple[int, ...]]) -> None:
        """Blocks whose labels changed (a stroke, undo or redo)."""
        self._dirty |= blocks

    def samples(self) -> tuple[np.ndarray, np.ndarray]:
        """Feature rows and labels of every labelled voxel, recomputing only the blocks that changed."""
        dirty, self._dirty = self._dirty, set()  # strokes painted meanwhile (GUI thread) mark their blocks anew
        fingerprint = self._registered()
        jobs = []
        for index in sorted(dirty):  # every block is submitted before any is waited for: the workers share them
            labels = self.labels.blocks.get(index)
            if labels is None or not labels.any():
                self._samples.pop(index, None)
                continue
            frames = label_frames(self.features, self.source, self.labels.grid.block(index).roi, labels.copy(),
                                  fingerprint)
            jobs.append((index, [(self._compute(task), frame_labels) for task, frame_labels in frames]))
        for index, frames in jobs:
            parts = [labelled_rows(future.result(self.features_timeout_s), labels) for future, labels in frames]
            self._samples[index] = concatenate_rows(parts, self.features.column_count)
            self.blocks_computed += 1
        x, y = concatenate_rows([self._samples[i] for i in sorted(self._samples)], self.features.column_count)
        return x, y.astype(np.int64)

    def _registered(self) -> str:
        """The fingerprint of the features' pipeline, added to the executor the first time (with Dask, a call
        to the scheduler: so not in the constructor, which the GUI thread runs)."""
        if self._fingerprint is None:
            executor = self.executor
            self._fingerprint = executor.add_pipeline(Pipeline(self.features, None, (), 0)) if executor else ""
        return self._fingerprint

    def _compute(self, task: BlockTask) -> Future:
        """The features of ``task`` on the workers, or here (then already done)."""
        if self.executor is not None:
            return self.executor.submit(task, VISIBLE)
        future: Future = Future()
        future.set_result(self.features.compute(task.raw, task.start, task.image, task.target))
        return future

    def train(self, trees: int = 100, forests: int = 2) -> tuple[Classifier, int]:
        """A new classifier from the labels as they are now, and the number of labelled voxels it used."""
        return train_sessions([self], trees, forests)


def train_sessions(sessions: Sequence[TrainingSession], trees: int = 100, forests: int = 2,
                   chunk_trees: int | None = None, should_stop: Callable[[], bool] | None = None
                   ) -> tuple[Classifier, int]:
    """One classifier from the labels of several images (a project's lanes, sharing one feature selection) as
    they are now, and the number of labelled voxels it used; ``chunk_trees`` and ``should_stop`` as
    :func:`~backend.io.training.train_classifier` takes them (asked first once the samples are there)."""
    parts = [session.samples() for session in sessions]
    x = np.concatenate([x for x, _ in parts]) if parts else np.empty((0, 0), np.float32)
    y = np.concatenate([y for _, y in parts]) if parts else np.empty(0, np.int64)
    if len(np.unique(y)) < 2:
        raise UserError("label at least two classes before training")
    return train_classifier(x, y, sessions[0].features.column_names(), trees, forests, chunk_trees=chunk_trees,
                            should_stop=should_stop), len(y)
