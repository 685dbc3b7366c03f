"""Read ilastik ``.ilp`` projects (1.2 to 1.4) into typed, frozen dataclasses. Never unpickles."""

from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np

from backend.compute.forest import CompiledForests, Forest, read_forest
from backend.compute.threshold import ThresholdSettings
from backend.errors import ProjectError
from backend.io.sources import parse_axistags

SUPPORTED_WORKFLOWS = ("Pixel Classification", "Object Classification (from pixel classification)")


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


def _text(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.item() if value.shape == () else value[0]
    return value.decode() if isinstance(value, bytes) else str(value)


def _get(group: h5py.Group, name: str, default=None):
    return group[name][()] if name in group else default


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
    workflow = _text(f["workflowName"][()])
    if workflow not in SUPPORTED_WORKFLOWS:
        raise ProjectError(
            f"{path}: workflow '{workflow}' is not supported (only Pixel Classification projects)"
        )
    pc = f.get("PixelClassification")
    if pc is None:
        raise ProjectError(f"{path}: the project has no PixelClassification section")
    lanes = _read_lanes(path, f)
    names = tuple(_text(n) for n in _get(pc, "LabelNames", []))
    return Project(
        path=path,
        version=_text(f["ilastikVersion"][()]),
        workflow=workflow,
        lanes=lanes,
        features=_read_features(path, f),
        label_names=names,
        label_colors=_colors(_get(pc, "LabelColors"), len(names)),
        pmap_colors=_colors(_get(pc, "PmapColors"), len(names)),
        classifier=_read_classifier(path, pc),
        threshold=_read_threshold(f.get("ThresholdTwoLevels")),
    )


def _read_lanes(path: str, f: h5py.File) -> tuple[RawDataInfo, ...]:
    infos = f.get("Input Data/infos")
    lanes = []
    for lane_name in sorted(infos.keys()) if infos is not None else []:
        raw = infos[lane_name].get("Raw Data")
        if raw is None or "filePath" not in raw:
            continue
        axes = None
        if "axistags" in raw:
            axes = parse_axistags(raw["axistags"][()])
        elif "axisorder" in raw:
            axes = _text(raw["axisorder"][()]).lower()
        shape = tuple(int(v) for v in raw["shape"][()]) if "shape" in raw else None
        lanes.append(RawDataInfo(
            file_path=_text(raw["filePath"][()]),
            location=_text(_get(raw, "location", b"FileSystem")),
            axes=axes,
            nickname=_text(_get(raw, "nickname", lane_name)),
            dataset_id=_text(_get(raw, "datasetId", b"")),
            shape=shape,
        ))
    if not lanes:
        raise ProjectError(f"{path}: the project has no input data (add a raw data file in ilastik)")
    return tuple(lanes)


def _read_features(path: str, f: h5py.File) -> FeatureSelection:
    fs = f.get("FeatureSelections")
    if fs is None or "SelectionMatrix" not in fs:
        raise ProjectError(f"{path}: the project has no feature selection")
    ids = tuple(_text(v) for v in fs["FeatureIds"][()])
    scales = tuple(float(v) for v in fs["Scales"][()])
    matrix = np.asarray(fs["SelectionMatrix"][()], bool)
    if matrix.shape != (len(ids), len(scales)):
        raise ProjectError(f"{path}: feature selection matrix {matrix.shape} does not match ids and scales")
    in2d = None
    if "ComputeIn2d" in fs and len(fs["ComputeIn2d"][()]) == len(scales):
        in2d = tuple(bool(v) for v in fs["ComputeIn2d"][()])
    return FeatureSelection(ids, scales, tuple(tuple(bool(v) for v in row) for row in matrix), in2d)


def _read_classifier(path: str, pc: h5py.Group) -> Classifier | None:
    cf = pc.get("ClassifierForests")
    if cf is None:
        return None
    groups = sorted(k for k in cf.keys() if k.startswith("Forest"))
    if not groups:
        return None
    forests = tuple(read_forest(cf[g]) for g in groups)
    known = tuple(int(v) for v in _get(cf, "known_labels", forests[0].labels))
    names = tuple(_text(v) for v in cf["feature_names"][()]) if "feature_names" in cf else None
    CompiledForests.build(forests, where=f"{path}:{cf.name}")  # validates node types early
    return Classifier(forests, known, names)


def _read_threshold(group: h5py.Group | None) -> ThresholdSettings | None:
    if group is None:
        return None
    d = ThresholdSettings()
    sig = group.get("SmootherSigma")

    def sigma(axis: str) -> float:
        return float(sig[axis][()]) if sig is not None and axis in sig else 1.0

    return ThresholdSettings(
        method=int(_get(group, "CurOperator", d.method)),
        min_size=int(_get(group, "MinSize", d.min_size)),
        max_size=int(_get(group, "MaxSize", d.max_size)),
        high=float(_get(group, "HighThreshold", d.high)),
        low=float(_get(group, "LowThreshold", d.low)),
        sigmas=(sigma("z"), sigma("y"), sigma("x")),
        channel=int(_get(group, "Channel", d.channel)),
        core_channel=int(_get(group, "CoreChannel", d.core_channel)),
    )


def _colors(value, n: int) -> tuple[tuple[int, int, int], ...]:
    if value is None:
        return tuple((0, 0, 0) for _ in range(n))
    return tuple(tuple(int(c) for c in row[:3]) for row in np.asarray(value))
