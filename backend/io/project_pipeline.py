"""A project's pipeline for one image: its feature selection and classifier, checked against each other."""

from __future__ import annotations

import numpy as np

from backend.compute.features import FeatureSet, normalise_feature_name
from backend.compute.pipeline import Pipeline
from backend.errors import ProjectError
from backend.io.project import Classifier, Project


def build_pipeline(project: Project, channels: int, volumetric: bool, classifier: Classifier | None = None,
                   require_classifier: bool = True) -> Pipeline:
    """The pipeline of a project for an image with ``channels`` channels (3D if ``volumetric``)."""
    fs = feature_set(project, channels, volumetric)
    classifier = classifier or (project.require_classifier() if require_classifier else project.classifier)
    forests = None
    if classifier is not None:
        check_feature_columns(project.path, fs, classifier)
        forests = classifier.compile()
    known = classifier.known_labels if classifier else ()
    return Pipeline(fs, forests, known, max(len(project.label_names), max(known, default=0)))


def feature_set(project: Project, channels: int, volumetric: bool) -> FeatureSet:
    """The project's feature selection resolved for an image with ``channels`` channels (3D if ``volumetric``)."""
    sel = project.features
    if sel.selected_count == 0:
        raise ProjectError(f"{project.path}: no features are selected")
    try:
        return FeatureSet.from_selection(sel.ids, sel.scales, np.array(sel.matrix), sel.compute_in_2d,
                                         channels, volumetric)
    except ValueError as exc:
        raise ProjectError(f"{project.path}: {exc}") from None


def check_feature_columns(path: str, fs: FeatureSet, classifier: Classifier) -> None:
    """Fail clearly if the forest expects other feature columns than the selection produces."""
    if classifier.feature_count != fs.column_count:
        raise ProjectError(
            f"{path}: the classifier expects {classifier.feature_count} features but the selection gives "
            f"{fs.column_count} for this image (wrong number of channels or dimensions?)"
        )
    if classifier.feature_names is None:
        return
    ours = [normalise_feature_name(n) for n in fs.column_names()]
    theirs = [normalise_feature_name(n) for n in classifier.feature_names]
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            raise ProjectError(f"{path}: feature column {i} is '{classifier.feature_names[i]}' in the "
                               f"classifier but '{fs.column_names()[i]}' in the selection")
