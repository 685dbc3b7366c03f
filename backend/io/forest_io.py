"""Write forests in vigra's HDF5 layout, converted from scikit-learn, so ilastik and vigra can load them."""

from __future__ import annotations

import h5py
import numpy as np

from backend.compute.forest import LEAF_NODE, THRESHOLD_NODE, Forest, Tree


def _vigra_threshold(threshold: float) -> float:
    """The t with ``x < t`` for exactly the float32 x that satisfy scikit-learn's ``x <= threshold``."""
    floor = np.float32(threshold)
    if float(floor) > threshold:
        floor = np.nextafter(floor, np.float32(-np.inf))
    return float(np.nextafter(floor, np.float32(np.inf)))


def tree_from_sklearn(estimator, feature_count: int) -> Tree:
    """One fitted scikit-learn decision tree as a vigra tree (threshold and leaf nodes)."""
    t = estimator.tree_
    classes = t.value.shape[2]
    topology = [feature_count, classes]
    parameters: list[float] = []
    position: dict[int, int] = {}
    order = [0]
    for node in order:  # breadth-first; the list grows while we walk it
        position[node] = len(topology)
        if t.children_left[node] == -1:
            topology += [LEAF_NODE, len(parameters)]
            counts = t.value[node, 0].astype(np.float64)
            parameters += [float(t.weighted_n_node_samples[node])] + list(counts / counts.sum())
        else:
            topology += [THRESHOLD_NODE, len(parameters), 0, 0, int(t.feature[node])]
            parameters += [1.0, _vigra_threshold(float(t.threshold[node]))]
            order += [int(t.children_left[node]), int(t.children_right[node])]
    for node, pos in position.items():
        if t.children_left[node] != -1:
            topology[pos + 2] = position[int(t.children_left[node])]
            topology[pos + 3] = position[int(t.children_right[node])]
    return Tree(np.asarray(topology, np.int32), np.asarray(parameters, np.float64))


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
