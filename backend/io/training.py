"""Train a classifier from a project's label blocks, as ilastik's "Live Update" would."""

from __future__ import annotations

import functools
import gc
import math
import re
from collections.abc import Callable, Iterator

import h5py
import numpy as np

from backend.compute.features import FeatureSet
from backend.compute.geometry import Roi
from backend.compute.pipeline import BlockTask
from backend.errors import ProjectError
from backend.io.checked import expect_attr_text, expect_dataset, expect_group, expect_integers, parse_axes, problem
from backend.io.dataset import open_lane
from backend.io.forest_io import forest_from_sklearn
from backend.io.project import Classifier, Project, label_bound
from backend.io.project_pipeline import build_pipeline
from backend.io.project_writer import check_replaceable, replace_classifier
from backend.io.sources import DataSource

_SLICE = re.compile(r"(\d+):(\d+)")


def label_blocks(project: Project, source: DataSource, lane: int = 0) -> Iterator[tuple[Roi, np.ndarray]]:
    """Each stored label block as (tzyx ROI, uint8 labels shaped like the ROI); a block that does not lie inside
    the image, whose shape disagrees with its blockSlice or that holds labels above the project's classes
    is a ProjectError, raised before its values are read."""
    bound = label_bound(project.label_names)
    with h5py.File(project.path, "r") as f:
        sets = expect_group(f, "PixelClassification/LabelSets", required=False)
        group = expect_group(sets, f"labels{lane:03d}", required=False) if sets is not None else None
        for name in sorted(group.keys()) if group is not None else []:
            yield _label_block(group, name, source, bound)


def _label_block(group: h5py.Group, name: str, source: DataSource, bound: int) -> tuple[Roi, np.ndarray]:
    ds = expect_dataset(group, name)
    text = expect_attr_text(ds, "blockSlice") or ""
    bounds = [(int(a), int(b)) for a, b in _SLICE.findall(text)]
    tags = expect_attr_text(ds, "axistags")
    shape = ds.shape or ()
    axes = parse_axes(group, name, tags) if tags is not None else _label_axes(source, len(shape))
    if not shape or len(bounds) != len(shape) or len(axes) != len(shape):
        raise problem(group, name, f"blockSlice '{text[:80]}' and axes '{axes}' do not fit a block of shape {shape}")
    if any(b - a != n for (a, b), n in zip(bounds, shape)):
        raise problem(group, name, f"has shape {shape} but its blockSlice is {text[:80]}")
    extent = dict(zip("tzyx", source.spatial_shape), c=1)
    if any(not 0 <= a < b <= extent[axis] for axis, (a, b) in zip(axes, bounds)):
        raise problem(group, name, f"blockSlice {text[:80]} ({axes}) lies outside the image "
                                   f"({' x '.join(map(str, source.spatial_shape))} tzyx, one channel)")
    data = expect_integers(group, name, 0, bound, ndims=(len(shape),), max_size=math.prod(shape))
    where = dict(zip(axes, bounds))
    roi = Roi(tuple(where.get(a, (0, 1))[0] for a in "tzyx"), tuple(where.get(a, (0, 1))[1] for a in "tzyx"))
    order = [axes.index(a) for a in "tzyx" if a in axes] + ([axes.index("c")] if "c" in axes else [])
    return roi, data.astype(np.uint8).transpose(order).reshape(roi.shape)


def _label_axes(source: DataSource, ndim: int) -> str:
    axes = source.axes if "c" in source.axes else source.axes + "c"
    return axes if len(axes) == ndim else source.axes


def labelled_samples(project: Project, source: DataSource, lane: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows and labels of every labelled voxel of lane ``lane`` (its raw data ``source``)."""
    x, y = _lane_samples(project, source, lane)
    if len(y) == 0:
        raise ProjectError(f"{project.path}: the project has no labels to train from")
    return x, y


def project_samples(project: Project, source: DataSource, lane: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows and labels of every labelled voxel of every lane, as ilastik trains on all lanes: ``source``
    is lane ``lane``'s raw data, the other lanes holding labels are opened as the project records them."""
    parts = [_lane_samples(project, source if index == lane else open_lane(project, index), index)
             for index in range(len(project.lanes)) if index == lane or _has_labels(project, index)]
    x, y = concatenate_rows(parts, parts[0][0].shape[1])
    if len(y) == 0:
        raise ProjectError(f"{project.path}: the project has no labels to train from")
    return x, y.astype(np.int64)


def _has_labels(project: Project, lane: int) -> bool:
    with h5py.File(project.path, "r") as f:
        group = f.get(f"PixelClassification/LabelSets/labels{lane:03d}")
        return isinstance(group, h5py.Group) and len(group) > 0


def _lane_samples(project: Project, source: DataSource, lane: int) -> tuple[np.ndarray, np.ndarray]:
    pipeline = build_pipeline(project, source.channels, source.shape[1] > 1, require_classifier=False)
    image = Roi.from_shape(source.spatial_shape)
    parts = []
    for roi, labels in label_blocks(project, source, lane):
        roi = roi.intersect(image)
        if roi is not None and labels.any():
            parts.append(block_samples(pipeline.features, source, roi, labels[tuple(slice(0, s) for s in roi.shape)]))
    x, y = concatenate_rows(parts, pipeline.features.column_count)
    return x, y.astype(np.int64)


def label_frames(features: FeatureSet, source: DataSource, roi: Roi, labels: np.ndarray,
                 fingerprint: str = "") -> list[tuple[BlockTask, np.ndarray]]:
    """A task computing the features of one label block's time step (its raw data read with the halo), with
    that step's labels, for every step holding labels (``labels`` shaped like ``roi``)."""
    image = Roi.from_shape(source.spatial_shape)
    frames = []
    for t in range(roi.start[0], roi.stop[0]):
        frame_labels = labels[t - roi.start[0]]
        if not frame_labels.any():
            continue
        frame = Roi((t, *roi.start[1:]), (t + 1, *roi.stop[1:]))
        halo = frame.grow((0, *features.halo), image)
        task = BlockTask(f"labels:{frame.start}", "Features", source.read(halo)[0], halo.start[1:],
                         image.shape[1:], tuple(zip(frame.start[1:], frame.stop[1:])), fingerprint)
        frames.append((task, frame_labels))
    return frames


def labelled_rows(feats: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The feature rows of the labelled voxels (``feats`` shaped like ``labels`` plus columns) and their labels."""
    mask = labels > 0
    return feats[mask], labels[mask]


def block_samples(features: FeatureSet, source: DataSource, roi: Roi, labels: np.ndarray) -> tuple[np.ndarray,
                                                                                                    np.ndarray]:
    """Feature rows and labels of the labelled voxels of one label block, computed here."""
    parts = [labelled_rows(features.compute(task.raw, task.start, task.image, task.target), frame_labels)
             for task, frame_labels in label_frames(features, source, roi, labels)]
    return concatenate_rows(parts, features.column_count)


def concatenate_rows(parts: list[tuple[np.ndarray, np.ndarray]], columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows and labels of several parts as one pair (empty with ``columns`` columns if none)."""
    xs = [np.empty((0, columns), np.float32)] + [x for x, _ in parts]
    ys = [np.empty(0, np.uint8)] + [y for _, y in parts]
    return np.concatenate(xs), np.concatenate(ys)


@functools.cache  # once per process
def load_trainer() -> None:
    """Import scikit-learn's forests now (about half a second), so that the first training does not wait.

    Once per process, without a garbage collection meanwhile, and what the process holds then (its modules,
    mostly) is kept out of later collections: a full collection over it paused every thread (the GUI's too) for
    0.2 s, once during the import and once just after the first training. :func:`collect_frozen_garbage` collects
    what became garbage among it since."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        from sklearn.ensemble import RandomForestClassifier  # noqa: F401
    finally:
        gc.freeze()  # (a collection first would itself be the pause)
        if enabled:
            gc.enable()


def collect_frozen_garbage() -> None:
    """Collect what became garbage among the objects :func:`load_trainer` kept out of collections (a closed
    project's), and keep what lives on out of them again: one full collection's pause."""
    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
        gc.freeze()


class TrainingStopped(Exception):
    """A training given up before its end (new labels made it outdated)."""


def train_classifier(x: np.ndarray, y: np.ndarray, feature_names: list[str], trees: int = 100,
                     forests: int = 2, seed: int = 0, chunk_trees: int | None = None,
                     should_stop: Callable[[], bool] | None = None) -> Classifier:
    """A classifier of ``forests`` random forests with ``trees`` trees in total, in vigra's layout.

    With ``chunk_trees``, each forest grows that many trees at a time (the same trees as all at once) and
    ``should_stop()`` is asked between chunks while fewer than half of the trees are grown: True gives up with
    :class:`TrainingStopped`. Past half the training ends, so that labels that change faster than trainings
    take still get results shown."""
    load_trainer()
    from sklearn.ensemble import RandomForestClassifier

    per = [trees // forests + (1 if i < trees % forests else 0) for i in range(forests)]
    fitted = []
    for i, n in enumerate(per):
        rf = RandomForestClassifier(n_estimators=n, max_features="sqrt", random_state=seed + i, n_jobs=-1,
                                    warm_start=True)
        step = chunk_trees or n
        for grown in [*range(step, n, step), n]:
            trees_grown = sum(per[:i]) + len(getattr(rf, "estimators_", ()))
            if should_stop is not None and 2 * trees_grown < trees and should_stop():
                raise TrainingStopped()
            rf.set_params(n_estimators=grown).fit(x, y)  # warm start: the trees grown so far are kept
        fitted.append(forest_from_sklearn(rf, x.shape[1]))
    return Classifier(tuple(fitted), fitted[0].labels, tuple(feature_names))


def retrain_project(project: Project, source: DataSource, lane: int = 0, progress: bool = True) -> Classifier:
    """Train on the labels of every lane (``source``: lane ``lane``'s raw data) and save the new classifier into
    the project file (refused before training if the project cannot be saved into)."""
    check_replaceable(project.path)
    x, y = project_samples(project, source, lane)
    pipeline = build_pipeline(project, source.channels, source.shape[1] > 1, require_classifier=False)
    classifier = train_classifier(x, y, pipeline.features.column_names())
    replace_classifier(project.path, classifier, len(y))
    return classifier
