"""vigra random forests: read from HDF5 and predicted with vigra's exact float32 arithmetic.

All trees of all forests are flattened into a few arrays walked by one compiled loop. Thresholds are
stored as the smallest float32 not below vigra's float64 threshold, which keeps ``x < t`` exact for
float32 features. Leaves point to themselves, so walks need no branch on the node type.
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

    feature: np.ndarray  # int32 per node (0 for leaves)
    threshold: np.ndarray  # float32 per node (+inf for leaves)
    children: np.ndarray  # int32, two per node: next node if x < threshold, else; leaves point to themselves
    is_leaf: np.ndarray  # uint8 per node
    leaf_row: np.ndarray  # int32 per node: row of leaf32/leaf64 (-1 for inner nodes)
    leaf32: np.ndarray  # float32 (leaves, classes)
    leaf64: np.ndarray  # float64 (leaves, classes)
    roots: np.ndarray  # int32 per tree
    forest_ends: np.ndarray  # int32: index after each forest's last tree
    class_count: int
    feature_count: int

    def validate(self) -> CompiledForests:
        """Check what the compiled walk relies on (ValueError otherwise): sizes agree, indices are in range,
        every inner node's children come after it (so no walk can loop) and leaves point to themselves."""
        n = self.feature.size
        arrays = (self.feature, self.threshold, self.is_leaf, self.leaf_row)
        if any(a.ndim != 1 or a.size != n for a in arrays) or self.children.shape != (2 * n,) or n == 0:
            raise ValueError("forest arrays of inconsistent sizes")
        if self.leaf32.ndim != 2 or self.leaf32.shape != self.leaf64.shape or self.leaf32.shape[1] != self.class_count:
            raise ValueError("forest leaf tables of inconsistent sizes")
        if not (0 < self.class_count <= 4096 and 0 < self.feature_count <= 1 << 16):
            raise ValueError(f"forest with {self.class_count} classes and {self.feature_count} features")
        leaf = self.is_leaf.astype(bool)
        left, right = self.children[0::2].astype(np.int64), self.children[1::2].astype(np.int64)
        index = np.arange(n)
        inner_ok = (self.feature >= 0) & (self.feature < self.feature_count) & (left > index) & (right > index) \
            & (left < n) & (right < n) & (self.leaf_row == -1)
        leaf_ok = (left == index) & (right == index) & (self.leaf_row >= 0) & (self.leaf_row < self.leaf32.shape[0])
        if not np.all(np.where(leaf, leaf_ok, inner_ok)):
            raise ValueError("forest nodes point out of range or backwards (a crafted or damaged forest)")
        ends = self.forest_ends.astype(np.int64)
        if self.roots.ndim != 1 or self.roots.size == 0 or np.any((self.roots < 0) | (self.roots >= n)) \
                or ends.ndim != 1 or ends.size == 0 or np.any(np.diff(ends) <= 0) or ends[0] <= 0 \
                or ends[-1] != self.roots.size:
            raise ValueError("forest roots or tree counts out of range")
        return self

    @classmethod
    def build(cls, forests: Sequence[Forest], where: str = "forest") -> CompiledForests:
        """Flatten forests that share labels and feature count; reject non-threshold nodes and damaged trees."""
        try:
            return cls._build(forests, where).validate()
        except (IndexError, ValueError) as exc:
            raise ProjectError(f"{where}: damaged forest ({exc})") from None

    @classmethod
    def _build(cls, forests: Sequence[Forest], where: str) -> CompiledForests:
        first = forests[0]
        nodes: dict[str, list] = {k: [] for k in ("feature", "threshold", "left", "right", "leaf_row")}
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
        leaf_row = np.asarray(nodes["leaf_row"], np.int32)
        return cls(
            np.asarray(nodes["feature"], np.int32),
            np.where(leaf_row >= 0, np.float32(np.inf), _float32_ceiling(np.asarray(nodes["threshold"], np.float64))),
            np.stack([nodes["left"], nodes["right"]], axis=1).astype(np.int32).reshape(-1),
            (leaf_row >= 0).astype(np.uint8),
            leaf_row,
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
        _predict(x, self.feature, self.threshold, self.children, self.is_leaf, self.leaf_row, self.leaf32,
                 self.leaf64, self.roots, self.forest_ends, out)
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
            nodes["leaf_row"].append(-1)
        else:
            nodes["feature"].append(0)
            nodes["threshold"].append(0.0)
            nodes["left"].append(order[pos])
            nodes["right"].append(order[pos])
            nodes["leaf_row"].append(len(leaves))
            leaves.append(params[addr + 1 : addr + 1 + classes])


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _walk(x, i, node, feature, threshold, children, is_leaf):  # pragma: no cover - compiled
    while not is_leaf[node]:
        node = children[2 * node + np.int32(x[i, feature[node]] >= threshold[node])]
    return node


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _predict(x, feature, threshold, children, is_leaf, leaf_row, leaf32, leaf64, roots, forest_ends,
             out):  # pragma: no cover - compiled
    """Eight neighbouring voxels walk each tree together: their paths are alike and independent."""
    n, classes = x.shape[0], leaf32.shape[1]
    total_trees = np.float32(roots.size)
    acc = np.zeros((8, classes), np.float32)
    weight = np.zeros(8, np.float64)
    combined = np.zeros((8, classes), np.float32)
    leaves = np.zeros(8, np.int64)
    for i0 in range(0, n, 8):
        m = min(8, n - i0)
        combined[:] = 0
        first = 0
        for f in range(forest_ends.size):
            acc[:] = 0
            weight[:] = 0
            for t in range(first, forest_ends[f]):
                if m == 8:
                    a = b = c = d = e = g = h = k = roots[t]
                    while (is_leaf[a] & is_leaf[b] & is_leaf[c] & is_leaf[d]
                           & is_leaf[e] & is_leaf[g] & is_leaf[h] & is_leaf[k]) == 0:
                        a = children[2 * a + np.int32(x[i0, feature[a]] >= threshold[a])]
                        b = children[2 * b + np.int32(x[i0 + 1, feature[b]] >= threshold[b])]
                        c = children[2 * c + np.int32(x[i0 + 2, feature[c]] >= threshold[c])]
                        d = children[2 * d + np.int32(x[i0 + 3, feature[d]] >= threshold[d])]
                        e = children[2 * e + np.int32(x[i0 + 4, feature[e]] >= threshold[e])]
                        g = children[2 * g + np.int32(x[i0 + 5, feature[g]] >= threshold[g])]
                        h = children[2 * h + np.int32(x[i0 + 6, feature[h]] >= threshold[h])]
                        k = children[2 * k + np.int32(x[i0 + 7, feature[k]] >= threshold[k])]
                    leaves[0], leaves[1], leaves[2], leaves[3] = a, b, c, d
                    leaves[4], leaves[5], leaves[6], leaves[7] = e, g, h, k
                else:
                    for j in range(m):
                        leaves[j] = _walk(x, i0 + j, roots[t], feature, threshold, children, is_leaf)
                for j in range(m):
                    row = leaf_row[leaves[j]]
                    for c2 in range(classes):
                        acc[j, c2] += leaf32[row, c2]
                        weight[j] += leaf64[row, c2]
            trees = np.float32(forest_ends[f] - first)
            for j in range(m):
                has_nan = False
                for col in range(x.shape[1]):
                    if np.isnan(x[i0 + j, col]):
                        has_nan = True
                if not has_nan:
                    for c2 in range(classes):
                        combined[j, c2] += (acc[j, c2] / np.float32(weight[j])) * trees
            first = forest_ends[f]
        for j in range(m):
            for c2 in range(classes):
                out[i0 + j, c2] = combined[j, c2] / total_trees
