"""Training in the app: the features of labelled voxels cached per label block, recomputed only for the
blocks a stroke touched, and a forest trained from all of them (as ilastik's Live Update does)."""

from __future__ import annotations

import numpy as np

from backend.compute.features import FeatureSet
from backend.errors import UserError
from backend.io.project import Classifier
from backend.io.sources import DataSource
from backend.io.training import block_samples, train_classifier
from backend.service.labels import LabelStore


class TrainingSession:
    """Trains classifiers from a :class:`LabelStore` over one image with one feature selection."""

    def __init__(self, source: DataSource, features: FeatureSet, labels: LabelStore):
        self.source, self.features, self.labels = source, features, labels
        self._samples: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._dirty: set[tuple[int, ...]] = set(labels.blocks)
        self.blocks_computed = 0  # label blocks whose features were computed (for tests and the status)

    def touched(self, blocks: set[tuple[int, ...]]) -> None:
        """Blocks whose labels changed (a stroke, undo or redo)."""
        self._dirty |= blocks

    def samples(self) -> tuple[np.ndarray, np.ndarray]:
        """Feature rows and labels of every labelled voxel, recomputing only the blocks that changed."""
        dirty, self._dirty = self._dirty, set()  # strokes painted meanwhile (GUI thread) mark their blocks anew
        for index in sorted(dirty):
            labels = self.labels.blocks.get(index)
            if labels is None or not labels.any():
                self._samples.pop(index, None)
                continue
            roi = self.labels.grid.block(index).roi
            self._samples[index] = block_samples(self.features, self.source, roi, labels.copy())
            self.blocks_computed += 1
        parts = [self._samples[i] for i in sorted(self._samples)]
        if not parts:
            return np.empty((0, self.features.column_count), np.float32), np.empty(0, np.int64)
        return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]).astype(np.int64)

    def train(self, trees: int = 100, forests: int = 2) -> tuple[Classifier, int]:
        """A new classifier from the labels as they are now, and the number of labelled voxels it used."""
        x, y = self.samples()
        if len(np.unique(y)) < 2:
            raise UserError("label at least two classes before training")
        return train_classifier(x, y, self.features.column_names(), trees, forests), len(y)
