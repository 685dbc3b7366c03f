"""Forests in vigra's HDF5 layout: read (checked) from a project, and written, converted from scikit-learn, so
that ilastik and vigra can load them."""

from __future__ import annotations

import h5py
import numpy as np

from backend.compute.forest import LEAF_NODE, THRESHOLD_NODE, Forest, Tree
from backend.errors import ProjectError
from backend.io.checked import NUMBER_KINDS, expect_array, expect_group, expect_integers, expect_number, where

MAX_FEATURES = 1 << 16  # as many feature columns as a compiled forest accepts
MAX_FOREST_CLASSES = 4096


def read_forest(group: h5py.Group) -> Forest:
    """One forest stored by vigra's ``rf_export_HDF5``, every value checked (ProjectError otherwise)."""
    ext = expect_group(group, "_ext_param")
    labels = expect_integers(ext, "labels", 0, (1 << 31) - 1, max_size=MAX_FOREST_CLASSES)
    feature_count = expect_number(ext, "column_count_", 1, MAX_FEATURES, integer=True)
    trees = tuple(_read_tree(expect_group(group, name)) for name in sorted(group.keys()) if not name.startswith("_"))
    if not trees:
        raise ProjectError(f"{where(group)}: forest without trees")
    if not labels.size:
        raise ProjectError(f"{where(ext, 'labels')}: the forest knows no labels")
    return Forest(trees, tuple(int(v) for v in labels), int(feature_count))


def _read_tree(group: h5py.Group) -> Tree:
    topology = expect_integers(group, "topology", -(1 << 31), (1 << 31) - 1)
    return Tree(topology.astype(np.int32), expect_array(group, "parameters", NUMBER_KINDS).astype(np.float64))


def tree_from_sklearn(estimator, feature_count: int) -> Tree:
    """One fitted scikit-learn decision tree as a vigra tree (threshold and leaf nodes, breadth-first)."""
    t = estimator.tree_
    left, right = t.children_left, t.children_right
    order = _breadth_first(left, right)
    leaf = left[order] == -1
    classes = t.value.shape[2]
    node_sizes = np.where(leaf, 2, 5)
    param_sizes = np.where(leaf, 1 + classes, 2)
    positions = np.empty(len(left), np.int64)
    positions[order] = 2 + np.cumsum(node_sizes) - node_sizes  # where each node starts in the topology
    params_at = np.cumsum(param_sizes) - param_sizes
    topology = np.zeros(2 + int(node_sizes.sum()), np.int32)
    topology[:2] = feature_count, classes
    parameters = np.zeros(int(param_sizes.sum()), np.float64)
    at, split = positions[order], order[~leaf]
    topology[at] = np.where(leaf, LEAF_NODE, THRESHOLD_NODE)
    topology[at + 1] = params_at
    inner = at[~leaf]
    topology[inner + 2], topology[inner + 3] = positions[left[split]], positions[right[split]]
    topology[inner + 4] = t.feature[split]
    parameters[params_at[~leaf]] = 1.0
    parameters[params_at[~leaf] + 1] = _vigra_thresholds(t.threshold[split])
    leaves, leaf_params = order[leaf], params_at[leaf]
    counts = t.value[leaves, 0].astype(np.float64)
    parameters[leaf_params] = t.weighted_n_node_samples[leaves]
    parameters[leaf_params[:, None] + 1 + np.arange(classes)] = counts / counts.sum(axis=1, keepdims=True)
    return Tree(topology, parameters)


def _breadth_first(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The tree's node ids level by level, each inner node's children left then right."""
    levels, level = [], np.zeros(1, np.int64)
    while level.size:
        levels.append(level)
        inner = level[left[level] != -1]
        level = np.stack([left[inner], right[inner]], axis=1).ravel().astype(np.int64)
    return np.concatenate(levels)


def _vigra_thresholds(thresholds: np.ndarray) -> np.ndarray:
    """For each threshold, the t with ``x < t`` for exactly the float32 x with scikit-learn's ``x <= threshold``."""
    floor = thresholds.astype(np.float32)
    above = floor.astype(np.float64) > thresholds
    floor[above] = np.nextafter(floor[above], np.float32(-np.inf))
    return np.nextafter(floor, np.float32(np.inf)).astype(np.float64)


def forest_from_sklearn(classifier, feature_count: int) -> Forest:
    """A fitted ``RandomForestClassifier`` as a vigra forest; labels are its ``classes_``."""
    trees = tuple(tree_from_sklearn(e, feature_count) for e in classifier.estimators_)
    return Forest(trees, tuple(int(c) for c in classifier.classes_), feature_count)


def write_forest(group: h5py.Group, forest: Forest, row_count: int) -> None:
    """Store one forest in ``group`` exactly as vigra's ``rf_export_HDF5`` lays it out."""
    f64 = lambda v: np.asarray([v], np.float64)  # noqa: E731
    classes = len(forest.labels)
    group.attrs["vigra_random_forest_version"] = np.asarray([0.1])
    ext = group.create_group("_ext_param")
    for name, value in {
        "actual_msample_": row_count, "actual_mtry_": max(1, int(np.sqrt(forest.feature_count))),
        "class_count_": classes, "column_count_": forest.feature_count, "is_weighted_": 0,
        "precision_": 0.0, "problem_type_": 1, "response_size_": 1, "row_count_": row_count, "used_": 1,
    }.items():
        ext.create_dataset(name, data=f64(value))
    ext.create_dataset("class_weights_", data=np.ones(classes, np.float64))
    ext.create_dataset("labels", data=np.asarray(forest.labels, np.uint32))
    opts = group.create_group("_options")
    for name, value in {
        "min_split_node_size_": 1, "mtry_": 0, "mtry_func_": 0, "mtry_switch_": 0, "predict_weighted_": 0,
        "prepare_online_learning_": 0, "sample_with_replacement_": 1, "stratification_method_": 3,
        "training_set_calc_switch_": 1, "training_set_func_": 0, "training_set_proportion_": 1.0,
        "training_set_size_": 0, "tree_count_": len(forest.trees),
    }.items():
        opts.create_dataset(name, data=f64(value))
    width = max(2, len(str(len(forest.trees) - 1)))
    for i, tree in enumerate(forest.trees):
        g = group.create_group(f"Tree_{i:0{width}d}")
        g.create_dataset("topology", data=tree.topology)
        g.create_dataset("parameters", data=tree.parameters)
