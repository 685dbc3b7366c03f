"""Read ilastik ``.ilp`` projects (1.2 to 1.4) into typed, frozen dataclasses. Never unpickles."""

from __future__ import annotations

import os
from dataclasses import dataclass

import h5py

from backend.compute.forest import CompiledForests, Forest
from backend.compute.threshold import MAX_SIGMA, METHODS, ThresholdSettings
from backend.errors import ProjectError
from backend.io.checked import (
    INTEGER_KINDS,
    expect_array,
    expect_group,
    expect_integers,
    expect_number,
    expect_text,
    expect_texts,
    parse_axes,
    present,
    problem,
)
from backend.io.forest_io import MAX_FEATURES, read_forest

SUPPORTED_WORKFLOWS = ("Pixel Classification", "Object Classification (from pixel classification)")
MAX_CLASSES = 99  # labels are stored as uint8, and ilastik keeps numbers above 99 for its eraser
MAX_EXTENT = 1 << 40  # no image axis is longer


@dataclass(frozen=True)
class RawDataInfo:
    """Where a lane's raw data lives, as the project recorded it."""

    file_path: str
    location: str  # "FileSystem" or "ProjectInternal"
    axes: str | None
    nickname: str
    dataset_id: str
    shape: tuple[int, ...] | None


@dataclass(frozen=True)
class FeatureSelection:
    """The feature selection matrix: ``matrix[i][j]`` selects feature ``ids[i]`` at ``scales[j]``."""

    ids: tuple[str, ...]
    scales: tuple[float, ...]
    matrix: tuple[tuple[bool, ...], ...]
    compute_in_2d: tuple[bool, ...] | None

    @property
    def selected_count(self) -> int:
        return sum(sum(row) for row in self.matrix)


@dataclass(frozen=True)
class Classifier:
    """The trained forests with the labels they know and the feature columns they expect."""

    forests: tuple[Forest, ...]
    known_labels: tuple[int, ...]
    feature_names: tuple[str, ...] | None

    @property
    def feature_count(self) -> int:
        return self.forests[0].feature_count

    @property
    def tree_count(self) -> int:
        return sum(len(f.trees) for f in self.forests)

    def compile(self) -> CompiledForests:
        """The flattened form used for prediction."""
        return CompiledForests.build(self.forests)


@dataclass(frozen=True)
class Project:
    """An ilastik pixel-classification project."""

    path: str
    version: str
    workflow: str
    lanes: tuple[RawDataInfo, ...]
    features: FeatureSelection
    label_names: tuple[str, ...]
    label_colors: tuple[tuple[int, int, int], ...]
    pmap_colors: tuple[tuple[int, int, int], ...]
    classifier: Classifier | None
    threshold: ThresholdSettings | None

    @property
    def directory(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    def require_classifier(self) -> Classifier:
        """The classifier, or a clear error if the project was saved untrained."""
        if self.classifier is None:
            raise ProjectError(
                f"{self.path}: the project has no trained classifier "
                "(open it in ilastik, train and save, or run with --retrain)"
            )
        return self.classifier


def open_project(path: str) -> Project:
    """Read a project file; raises :class:`ProjectError` with a one-line message if it cannot."""
    if not os.path.exists(path):
        raise ProjectError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise ProjectError(f"{path}: not a file")
    if not h5py.is_hdf5(path):
        raise ProjectError(f"{path}: not an ilastik project (not an HDF5 file)")
    try:
        with h5py.File(path, "r") as f:
            return _read(path, f)
    except OSError as exc:
        raise ProjectError(f"{path}: cannot read the project file, it may be truncated ({exc})") from None


def _read(path: str, f: h5py.File) -> Project:
    if "workflowName" not in f or "ilastikVersion" not in f:
        raise ProjectError(f"{path}: not an ilastik project (no workflowName/ilastikVersion)")
    workflow = expect_text(f, "workflowName")
    if workflow not in SUPPORTED_WORKFLOWS:
        raise ProjectError(
            f"{path}: workflow '{workflow[:80]}' is not supported (only Pixel Classification projects)"
        )
    pc = expect_group(f, "PixelClassification", required=False)
    if pc is None:
        raise ProjectError(f"{path}: the project has no PixelClassification section")
    names = expect_texts(pc, "LabelNames", MAX_CLASSES) if present(pc, "LabelNames") else ()
    return Project(
        path=path,
        version=expect_text(f, "ilastikVersion"),
        workflow=workflow,
        lanes=_read_lanes(path, f),
        features=_read_features(path, f),
        label_names=names,
        label_colors=_colors(pc, "LabelColors", len(names)),
        pmap_colors=_colors(pc, "PmapColors", len(names)),
        classifier=_read_classifier(pc),
        threshold=_read_threshold(expect_group(f, "ThresholdTwoLevels", required=False)),
    )


def label_bound(names: tuple[str, ...]) -> int:
    """The largest label value a project with these class names may hold."""
    return len(names) or MAX_CLASSES


def _read_lanes(path: str, f: h5py.File) -> tuple[RawDataInfo, ...]:
    infos = expect_group(f, "Input Data/infos", required=False)
    lanes = []
    for lane_name in sorted(infos.keys()) if infos is not None else []:
        raw = expect_group(expect_group(infos, lane_name), "Raw Data", required=False)
        if raw is None or "filePath" not in raw:
            continue
        axes = None
        if "axistags" in raw:
            axes = parse_axes(raw, "axistags", expect_text(raw, "axistags"))
        elif "axisorder" in raw:
            axes = expect_text(raw, "axisorder").lower()
        shape = None
        if "shape" in raw:
            shape = tuple(int(v) for v in expect_integers(raw, "shape", 0, MAX_EXTENT, max_size=8))
        lanes.append(RawDataInfo(
            file_path=expect_text(raw, "filePath"),
            location=expect_text(raw, "location", "FileSystem"),
            axes=axes,
            nickname=expect_text(raw, "nickname", lane_name),
            dataset_id=expect_text(raw, "datasetId", ""),
            shape=shape,
        ))
    if not lanes:
        raise ProjectError(f"{path}: the project has no input data (add a raw data file in ilastik)")
    return tuple(lanes)


def _read_features(path: str, f: h5py.File) -> FeatureSelection:
    fs = expect_group(f, "FeatureSelections", required=False)
    if fs is None or "SelectionMatrix" not in fs:
        raise ProjectError(f"{path}: the project has no feature selection")
    ids = expect_texts(fs, "FeatureIds", max_size=64)
    scales = tuple(float(v) for v in expect_array(fs, "Scales", max_size=64))
    if any(not 0 <= s <= MAX_SIGMA for s in scales):
        raise problem(fs, "Scales", f"holds scales outside 0 to {MAX_SIGMA:g}")
    matrix = expect_array(fs, "SelectionMatrix", "b" + INTEGER_KINDS, (2,)).astype(bool)
    if matrix.shape != (len(ids), len(scales)):
        raise problem(fs, "SelectionMatrix", f"has shape {matrix.shape}, which does not match "
                                             f"{len(ids)} feature ids and {len(scales)} scales")
    in2d = None
    if "ComputeIn2d" in fs:
        flags = expect_array(fs, "ComputeIn2d", "b" + INTEGER_KINDS)
        in2d = tuple(bool(v) for v in flags) if len(flags) == len(scales) else None
    return FeatureSelection(ids, scales, tuple(tuple(bool(v) for v in row) for row in matrix), in2d)


def _read_classifier(pc: h5py.Group) -> Classifier | None:
    """The classifier; its labels are bounded by MAX_CLASSES rather than by the project's classes, which the
    pipeline lets a classifier exceed."""
    cf = expect_group(pc, "ClassifierForests", required=False)
    if cf is None:
        return None
    groups = sorted(k for k in cf.keys() if k.startswith("Forest"))
    if not groups:
        return None
    forests = tuple(read_forest(expect_group(cf, g)) for g in groups)
    if "known_labels" in cf:
        known = tuple(int(v) for v in expect_integers(cf, "known_labels", 0, MAX_CLASSES, max_size=MAX_CLASSES))
    else:
        known = forests[0].labels
    if any(label > MAX_CLASSES for forest in forests for label in forest.labels):
        raise problem(cf, "", f"the classifier knows labels above {MAX_CLASSES}")
    names = expect_texts(cf, "feature_names", MAX_FEATURES) if "feature_names" in cf else None
    CompiledForests.build(forests, where=f"{cf.file.filename}: {cf.name}")  # validates node types early
    return Classifier(forests, known, names)


def _read_threshold(group: h5py.Group | None) -> ThresholdSettings | None:
    """ilastik's thresholding parameters in every layout it wrote: 1.2's ``SingleThreshold`` (the simple method's
    threshold), no ``CoreChannel`` (hysteresis cores then come from ``Channel``), per-axis ``SmootherSigma``.
    Graph-cut and identity-preserving methods are read as they are; computing objects with them is refused."""
    if group is None:
        return None
    d = ThresholdSettings()
    sig = expect_group(group, "SmootherSigma", required=False)

    def sigma(axis: str) -> float:
        return expect_number(sig, axis, 0.0, MAX_SIGMA, 1.0) if sig is not None else 1.0

    def whole(name: str, default: int, high: float = MAX_EXTENT) -> int:
        return int(expect_number(group, name, 0, high, default, integer=True))

    def fraction(name: str, default: float) -> float:
        return expect_number(group, name, 0.0, 1.0, default)

    method = whole("CurOperator", d.method, len(METHODS) - 1)
    low = fraction("LowThreshold", d.low)
    if method == 0 and present(group, "SingleThreshold"):  # as ilastik's ThresholdTwoLevelsSerializer reads it
        low = fraction("SingleThreshold", low)
    channel = whole("Channel", d.channel, MAX_CLASSES)
    core_default = channel if method in (1, 3) else d.core_channel  # older projects seeded on the same channel
    return ThresholdSettings(
        method=method,
        min_size=whole("MinSize", d.min_size),
        max_size=whole("MaxSize", d.max_size),
        high=fraction("HighThreshold", d.high),
        low=low,
        sigmas=(sigma("z"), sigma("y"), sigma("x")),
        channel=channel,
        core_channel=whole("CoreChannel", core_default, MAX_CLASSES),
    )


def _colors(pc: h5py.Group, name: str, n: int) -> tuple[tuple[int, int, int], ...]:
    if not present(pc, name):
        return tuple((0, 0, 0) for _ in range(n))
    table = expect_integers(pc, name, 0, 255, ndims=(2,), max_size=4 * MAX_CLASSES)
    if table.shape[1] < 3 or table.shape[0] < n:
        raise problem(pc, name, f"should have (red, green, blue) rows for {n} label classes but has shape "
                                f"{table.shape}")
    return tuple(tuple(int(c) for c in row[:3]) for row in table)
