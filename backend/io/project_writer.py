"""Write ilastik pixel-classification projects (1.4 layout) and replace a project's classifier safely."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import h5py
import numpy as np

from backend.checks import decimal
from backend.compute.threshold import ThresholdSettings
from backend.errors import ProjectError
from backend.io.forest_io import write_forest
from backend.io.project import Classifier, FeatureSelection
from backend.io.writers import axistags_json

ILASTIK_VERSION = "1.4.1"
_SAVING = ".saving"  # the end of a copy's name while it is being saved: .NAME.HOST.PID.RANDOM.saving
# Class names ilastik records for its default classifier; ilastik reads them, we never unpickle them.
_PICKLED_TYPE = b"clazyflow.classifiers.parallelVigraRfLazyflowClassifier\nParallelVigraRfLazyflowClassifier\np0\n."


@dataclass(frozen=True)
class LabelBlock:
    """Labels (0 = unlabelled) for a box of the raw data, given per raw axis plus channel."""

    bounds: tuple[tuple[int, int], ...]
    labels: np.ndarray


def write_classifier(pc: h5py.Group, classifier: Classifier, row_count: int) -> None:
    """Replace ``PixelClassification/ClassifierForests`` with ``classifier``."""
    if "ClassifierForests" in pc:
        del pc["ClassifierForests"]
    cf = pc.create_group("ClassifierForests")
    for i, forest in enumerate(classifier.forests):
        write_forest(cf.create_group(f"Forest{i:04d}"), forest, row_count)
    cf.create_dataset("known_labels", data=np.asarray(classifier.known_labels, np.int64))
    names = [n.encode() for n in classifier.feature_names or ()]
    cf.create_dataset("feature_names", data=np.asarray(names, dtype=object), dtype=h5py.string_dtype())
    cf.create_dataset("pickled_type", data=_PICKLED_TYPE)


@dataclass(frozen=True)
class RawInput:
    """A lane's raw data as the project records it: the file (relative to the project's folder, or absolute),
    its axes and native shape, and the name ilastik shows for it."""

    file_path: str
    axes: str
    shape: tuple[int, ...]
    nickname: str


def write_raw_input(f: h5py.File, lane: int, raw_input: RawInput) -> None:
    """Write lane ``lane``'s ``Input Data/infos/laneNNNN`` with ilastik 1.4's fields (replacing it)."""
    name = f"Input Data/infos/lane{lane:04d}"
    if name in f:
        del f[name]
    raw = f.create_group(f"{name}/Raw Data")
    kind = "FilesystemDatasetInfo" if os.path.isabs(raw_input.file_path) else "RelativeFilesystemDatasetInfo"
    for key, value in {"filePath": raw_input.file_path, "location": "FileSystem", "nickname": raw_input.nickname,
                       "datasetId": str(uuid.uuid4()), "axistags": axistags_json(raw_input.axes),
                       "__class__": kind, "display_mode": "default", "working_scale": ""}.items():
        raw.create_dataset(key, data=value.encode(), dtype=h5py.string_dtype("ascii" if value.isascii() else "utf-8"))
    raw["shape"] = np.asarray(raw_input.shape, np.int64)
    for key in ("allowLabels", "normalizeDisplay", "scale_locked"):
        raw[key] = key == "allowLabels"
    f.create_group(f"{name}/Prediction Mask")


def write_project(path: str, raw_path: str, axes: str, shape: Sequence[int], features: FeatureSelection,
                  label_names: Sequence[str], label_colors: Sequence[Sequence[int]],
                  label_blocks: Sequence[LabelBlock], classifier: Classifier | None, row_count: int = 0,
                  nickname: str = "raw") -> None:
    """Write a complete one-lane project that ilastik and ilastik-desktop open."""
    with h5py.File(path, "w") as f:
        f["ilastikVersion"] = ILASTIK_VERSION.encode()
        f["workflowName"] = b"Pixel Classification"
        f["time"] = b"written by ilastik-desktop"
        f["currentApplet"] = 2
        write_raw_input(f, 0, RawInput(raw_path, axes, tuple(shape), nickname))
        f["Input Data/Role Names"] = np.asarray([b"Raw Data", b"Prediction Mask"], dtype=object)
        f["Input Data/StorageVersion"] = b"0.2"
        write_features(f, features)
        pc = f.create_group("PixelClassification")
        write_classes(pc, label_names, label_colors)
        pc["StorageVersion"] = b"0.1"
        write_label_blocks(pc, 0, label_blocks, axes)
        if classifier is not None:
            write_classifier(pc, classifier, row_count)


def write_features(f: h5py.File, features: FeatureSelection) -> None:
    """Replace the project's feature selection."""
    if "FeatureSelections" in f:
        del f["FeatureSelections"]
    fs = f.create_group("FeatureSelections")
    fs["FeatureIds"] = np.asarray([i.encode() for i in features.ids])
    fs["Scales"] = np.asarray(features.scales, np.float64)
    fs["SelectionMatrix"] = np.asarray(features.matrix, bool)
    fs["ComputeIn2d"] = np.asarray(features.compute_in_2d or [False] * len(features.scales), bool)
    fs["StorageVersion"] = b"0.1"


def write_threshold(f: h5py.File, settings: ThresholdSettings) -> None:
    """Replace the thresholding parameters (ilastik's 1.4 ``ThresholdTwoLevels`` layout: the simple threshold in
    ``LowThreshold``, ``CoreChannel`` explicit; a method ilastik-desktop does not compute is kept as it was)."""
    if "ThresholdTwoLevels" in f:
        del f["ThresholdTwoLevels"]
    group = f.create_group("ThresholdTwoLevels")
    for key, value in (("CurOperator", settings.method), ("MinSize", settings.min_size),
                       ("MaxSize", settings.max_size), ("HighThreshold", settings.high),
                       ("LowThreshold", settings.low), ("Channel", settings.channel),
                       ("CoreChannel", settings.core_channel)):
        group[key] = value
    sigmas = group.create_group("SmootherSigma")
    for axis, sigma in zip("zyx", settings.sigmas):
        sigmas[axis] = float(sigma)
    group["StorageVersion"] = b"0.1"


def write_classes(pc: h5py.Group, names: Sequence[str], colors: Sequence[Sequence[int]]) -> None:
    """Replace the label classes' names, label colours and prediction colours."""
    for key, value in (("LabelNames", np.asarray([n.encode() for n in names])),
                       ("LabelColors", np.asarray(colors, np.int64)), ("PmapColors", np.asarray(colors, np.int64))):
        if key in pc:
            del pc[key]
        pc[key] = value


def write_label_blocks(pc: h5py.Group, lane: int, blocks: Sequence[LabelBlock], axes: str) -> None:
    """Replace lane ``lane``'s label blocks (ilastik's ``LabelSets/labelsNNN/blockNNNN`` with blockSlice)."""
    name = f"LabelSets/labels{lane:03d}"
    if name in pc:
        del pc[name]
    sets = pc.create_group(name)
    for i, block in enumerate(blocks):
        ds = sets.create_dataset(f"block{i:04d}", data=block.labels.astype(np.uint8))
        ds.attrs["blockSlice"] = "[" + ",".join(f"{a}:{b}" for a, b in block.bounds) + "]"
        ds.attrs["axistags"] = axistags_json(axes if "c" in axes else axes + "c")


def label_block(roi, labels: np.ndarray, axes: str) -> LabelBlock:
    """A tzyx label block (``labels`` shaped like ``roi``) in the raw data's ``axes`` plus a channel axis."""
    present = [a for a in "tzyx" if a in axes]
    order = [a for a in axes if a != "c"] + ["c"]
    values = labels.reshape([roi.shape["tzyx".index(a)] if a in present else 1 for a in "tzyx"])
    values = values.squeeze(axis=tuple(i for i, a in enumerate("tzyx") if a not in present))
    values = values.transpose([present.index(a) for a in order if a != "c"])[..., None]
    bounds = tuple((roi.start["tzyx".index(a)], roi.stop["tzyx".index(a)]) if a != "c" else (0, 1) for a in order)
    return LabelBlock(bounds, values)


@dataclass(frozen=True)
class LaneLabels:
    """One lane's labels as saved: its index, raw axes and label blocks; ``raw_input`` for a lane added in the
    app (its ``Input Data`` entry is written too), None for a lane the project already records."""

    lane: int
    axes: str
    blocks: Sequence[LabelBlock]
    raw_input: RawInput | None = None


@dataclass(frozen=True)
class Training:
    """What training in the app changes in a project: features, classes, the lanes' labels (and the lanes
    added), the classifier."""

    features: FeatureSelection
    names: Sequence[str]
    colors: Sequence[Sequence[int]]
    lanes: Sequence[LaneLabels]  # the lanes whose labels are saved; the project's other lanes keep theirs
    classifier: Classifier | None  # None: the project keeps no classifier (it no longer fits the classes)
    row_count: int
    threshold: ThresholdSettings | None = None  # the thresholding panel's parameters


def save_training(project_path: str, training: Training, target: str | None = None) -> None:
    """Save training into the project, or into a copy at ``target`` (Save As: relative raw data paths are
    rewritten for the new folder). The file is swapped in only when complete."""
    def edit(f: h5py.File) -> None:
        write_features(f, training.features)
        if training.threshold is not None:
            write_threshold(f, training.threshold)
        for lane in training.lanes:
            if lane.raw_input is not None:
                write_raw_input(f, lane.lane, lane.raw_input)
        pc = f.require_group("PixelClassification")
        write_classes(pc, training.names, training.colors)
        for lane in training.lanes:
            write_label_blocks(pc, lane.lane, lane.blocks, lane.axes)
        if training.classifier is not None:
            write_classifier(pc, training.classifier, training.row_count)
        elif "ClassifierForests" in pc:
            del pc["ClassifierForests"]
        if target is not None:
            relocate_raw_paths(f, os.path.dirname(os.path.abspath(project_path)),
                               os.path.dirname(os.path.abspath(target)))

    _rewrite(project_path, edit, target)


def relocate_raw_paths(f: h5py.File, old_folder: str, new_folder: str) -> None:
    """Rewrite the lanes' relative raw data paths so that they point at the same files from ``new_folder``."""
    infos = f.get("Input Data/infos")
    for lane in infos.values() if infos is not None else ():
        raw = lane.get("Raw Data")
        if raw is None or "filePath" not in raw or _text(raw.get("location", b"FileSystem")) != "FileSystem":
            continue
        path = _text(raw["filePath"])
        if not os.path.isabs(path):
            del raw["filePath"]
            raw["filePath"] = os.path.relpath(os.path.join(old_folder, path), new_folder).encode()


def _text(dataset) -> str:
    value = dataset[()] if isinstance(dataset, h5py.Dataset) else dataset
    return value.decode() if isinstance(value, bytes) else str(value)


def replace_classifier(project_path: str, classifier: Classifier, row_count: int) -> None:
    """Save a new classifier into an existing project; the file is swapped in only when complete."""
    _rewrite(project_path, lambda f: write_classifier(f.require_group("PixelClassification"), classifier,
                                                      row_count))


def check_replaceable(project_path: str) -> None:
    """ProjectError unless the project (the file a link points to) can be saved into: the file and its folder
    (where the new file is written before it takes the project's place) are writable."""
    real = os.path.realpath(project_path)
    folder = os.path.dirname(real)
    if not os.access(real, os.W_OK):
        raise ProjectError(f"{project_path}: the project file is read-only, so nothing can be saved into it")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ProjectError(f"{project_path}: its folder {folder} is not writable, so nothing can be saved into "
                           "the project")


def _rewrite(project_path: str, edit, target: str | None = None) -> None:
    """Apply ``edit`` to a copy of the project and put the copy in its place, or at ``target`` (the original
    stays as it was, and ``target`` appears only when complete). Links are written through: the file they
    point to is replaced. A copy left by a process that was killed while saving is removed here."""
    source = os.path.realpath(project_path)
    target = os.path.realpath(target or project_path)
    folder, name = os.path.split(target)
    remove_stale_copies(folder, name)
    tmp = os.path.join(folder, f".{name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}{_SAVING}")
    try:
        shutil.copyfile(source, tmp)
        with h5py.File(tmp, "r+") as f:
            edit(f)
        shutil.copymode(source, tmp)  # the project keeps its permissions
        os.replace(tmp, target)
    except (OSError, RuntimeError) as exc:  # h5py reports a failed write (a full disk) as RuntimeError
        detail = getattr(exc, "strerror", None) or exc
        raise ProjectError(f"{target}: could not save the project ({detail}); the file is unchanged") from None
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def remove_stale_copies(folder: str, name: str) -> None:
    """Remove the copies of project ``name`` that a process of this machine that no longer runs left while
    saving (killed before it could swap its copy in or remove it)."""
    prefix, host = f".{name}.", socket.gethostname()
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(_SAVING)):
            continue
        owner = entry[len(prefix):-len(_SAVING)].rsplit(".", 2)
        if len(owner) == 3 and owner[0] == host and decimal(owner[1], 1 << 31) and not _running(int(owner[1])):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, entry))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's
    return True
