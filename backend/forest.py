"""vigra random forests: read from HDF5 and predicted with vigra's exact float32 arithmetic.

All trees of all forests are flattened into a few arrays walked by one compiled loop. Thresholds are
stored as the smallest float32 not below vigra's float64 threshold, which keeps ``x < t`` exact for
float32 features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import h5py
import numba
import numpy as np

from backend.errors import ProjectError

THRESHOLD_NODE = 0
LEAF_NODE = 0x40000000


@dataclass(frozen=True)
class Tree:
    """One vigra decision tree: ``topology`` (int32) and ``parameters`` (float64) as stored."""

    topology: np.ndarray
    parameters: np.ndarray


@dataclass(frozen=True)
class Forest:
    """One vigra forest: its trees, the class label of each output column and the feature count."""

    trees: tuple[Tree, ...]
    labels: tuple[int, ...]
    feature_count: int


def read_forest(group: h5py.Group) -> Forest:
    """Read one forest stored by vigra's ``rf_export_HDF5``."""
    where = f"{group.file.filename}:{group.name}"
    try:
        ext = group["_ext_param"]
        labels = tuple(int(v) for v in ext["labels"][()])
        feature_count = int(ext["column_count_"][()][0])
        names = sorted(k for k in group.keys() if not k.startswith("_"))
        trees = tuple(
            Tree(np.asarray(group[n]["topology"][()], np.int32), np.asarray(group[n]["parameters"][()], np.float64))
            for n in names
        )
    except KeyError as exc:
        raise ProjectError(f"{where}: not a vigra random forest ({exc})") from None
    if not trees:
        raise ProjectError(f"{where}: forest without trees")
    return Forest(trees, labels, feature_count)


def _float32_ceiling(values: np.ndarray) -> np.ndarray:
    """The smallest float32 >= each float64 value (so ``x < t`` is unchanged for float32 x)."""
    down = values.astype(np.float32)
    up = np.where(down.astype(np.float64) < values, np.nextafter(down, np.float32(np.inf)), down)
    return up.astype(np.float32)


@dataclass(frozen=True)
class CompiledForests:
    """Flattened trees of one or more forests, ready for :func:`predict`."""

    feature: np.ndarray  # int32 per node, -1 for leaves
    threshold: np.ndarray  # float32 per node
    left: np.ndarray  # int32 per node (for leaves: row in leaf_values)
    right: np.ndarray  # int32 per node
    leaf32: np.ndarray  # float32 (leaves, classes)
    leaf64: np.ndarray  # float64 (leaves, classes)
    roots: np.ndarray  # int32 per tree
    forest_ends: np.ndarray  # int32: index after each forest's last tree
    class_count: int
    feature_count: int

    @classmethod
    def build(cls, forests: Sequence[Forest], where: str = "forest") -> CompiledForests:
        """Flatten forests that share labels and feature count; reject non-threshold nodes."""
        first = forests[0]
        nodes: dict[str, list] = {k: [] for k in ("feature", "threshold", "left", "right")}
        leaves: list[np.ndarray] = []
        roots, ends = [], []
        for forest in forests:
            if forest.labels != first.labels or forest.feature_count != first.feature_count:
                raise ProjectError(f"{where}: forests disagree on labels or feature count")
            for tree in forest.trees:
                roots.append(len(nodes["feature"]))
                _flatten_tree(tree, len(first.labels), nodes, leaves, where)
            ends.append(len(roots))
        leaf64 = np.asarray(leaves, np.float64).reshape(-1, len(first.labels))
        return cls(
            np.asarray(nodes["feature"], np.int32),
            _float32_ceiling(np.asarray(nodes["threshold"], np.float64)),
            np.asarray(nodes["left"], np.int32),
            np.asarray(nodes["right"], np.int32),
            leaf64.astype(np.float32),
            leaf64,
            np.asarray(roots, np.int32),
            np.asarray(ends, np.int32),
            len(first.labels),
            first.feature_count,
        )

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n, classes)`` float32 for a float32 feature matrix ``(n, features)``."""
        x = np.ascontiguousarray(features, np.float32)
        if x.ndim != 2 or x.shape[1] != self.feature_count:
            raise ValueError(f"expected (n, {self.feature_count}) features, got {x.shape}")
        out = np.empty((x.shape[0], self.class_count), np.float32)
        _predict(x, self.feature, self.threshold, self.left, self.right, self.leaf32, self.leaf64,
                 self.roots, self.forest_ends, out)
        return out


def _flatten_tree(tree: Tree, classes: int, nodes: dict, leaves: list, where: str) -> None:
    topo, params = tree.topology, tree.parameters
    base = len(nodes["feature"])
    order: dict[int, int] = {}
    stack = [2]
    while stack:  # first pass: number every reachable node
        pos = stack.pop()
        if pos in order:
            continue
        order[pos] = base + len(order)
        if topo[pos] == THRESHOLD_NODE:
            stack.extend((int(topo[pos + 3]), int(topo[pos + 2])))
        elif topo[pos] != LEAF_NODE:
            raise ProjectError(
                f"{where}: forest node type {int(topo[pos])} is not supported (only threshold and leaf nodes)"
            )
    for pos in sorted(order, key=order.get):
        addr = int(topo[pos + 1])
        if topo[pos] == THRESHOLD_NODE:
            nodes["feature"].append(int(topo[pos + 4]))
            nodes["threshold"].append(params[addr + 1])
            nodes["left"].append(order[int(topo[pos + 2])])
            nodes["right"].append(order[int(topo[pos + 3])])
        else:
            nodes["feature"].append(-1)
            nodes["threshold"].append(0.0)
            nodes["left"].append(len(leaves))
            nodes["right"].append(-1)
            leaves.append(params[addr + 1 : addr + 1 + classes])


@numba.njit(cache=True, nogil=True)
def _predict(x, feature, threshold, left, right, leaf32, leaf64, roots, forest_ends, out):  # pragma: no cover
    n, classes = x.shape[0], leaf32.shape[1]
    total_trees = np.float32(roots.size)
    acc = np.zeros(classes, np.float32)
    combined = np.zeros(classes, np.float32)
    for i in range(n):
        has_nan = False
        for j in range(x.shape[1]):
            if np.isnan(x[i, j]):
                has_nan = True
                break
        combined[:] = 0
        if not has_nan:
            first = 0
            for f in range(forest_ends.size):
                acc[:] = 0
                weight = 0.0
                for t in range(first, forest_ends[f]):
                    node = roots[t]
                    while feature[node] >= 0:
                        node = left[node] if x[i, feature[node]] < threshold[node] else right[node]
                    leaf = left[node]
                    for c in range(classes):
                        acc[c] += leaf32[leaf, c]
                        weight += leaf64[leaf, c]
                trees = np.float32(forest_ends[f] - first)
                for c in range(classes):
                    combined[c] += (acc[c] / np.float32(weight)) * trees
                first = forest_ends[f]
        for c in range(classes):
            out[i, c] = combined[c] / total_trees
