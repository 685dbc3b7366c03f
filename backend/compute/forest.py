"""vigra random forests (read by :mod:`backend.io.forest_io`), predicted with vigra's exact float32 arithmetic.

All trees of all forests are flattened into one table of 16-byte nodes walked by one compiled loop.
A node holds its threshold (float32 bits), its feature, its first child (the second child follows it:
trees are laid out breadth-first) and its leaf row. Thresholds are stored as the smallest float32 not
below vigra's float64 threshold, which keeps ``x < t`` exact for float32 features. A leaf's feature is
``LEAF`` (negative, which ends a walk), its threshold NaN and its first child itself, so a leaf never
moves and eight voxels can walk a tree in lockstep until all of them reach a leaf.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from backend.compute.forest_bits import CHUNK, LEAF, exit_bits, exit_rows, leaf_bits, vote
from backend.compute.kernel_cache import kernel
from backend.errors import ProjectError

THRESHOLD_NODE = 0
LEAF_NODE = 0x40000000
_NAN_BITS = np.float32(np.nan).view(np.int32)


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


def _float32_ceiling(values: np.ndarray) -> np.ndarray:
    """The smallest float32 >= each float64 value (so ``x < t`` is unchanged for float32 x)."""
    with np.errstate(over="ignore"):  # beyond float32's range the ceiling is inf, as it should be
        down = values.astype(np.float32)
        up = np.where(down.astype(np.float64) < values, np.nextafter(down, np.float32(np.inf)), down)
    return up.astype(np.float32)


@dataclass(frozen=True)
class CompiledForests:
    """Flattened trees of one or more forests, ready for :meth:`predict`."""

    nodes: np.ndarray  # int32 (nodes, 4): threshold bits, feature (LEAF for leaves), first child, leaf row (-1)
    leaf32: np.ndarray  # float32 (leaves, classes)
    leaf64: np.ndarray  # float64 (leaves, classes)
    roots: np.ndarray  # int32 per tree
    forest_ends: np.ndarray  # int32: index after each forest's last tree
    class_count: int
    feature_count: int

    def validate(self) -> CompiledForests:
        """Check what the compiled walk relies on (ValueError otherwise): sizes agree, indices are in range,
        every inner node's children come after it (so no walk can loop) and leaves never move."""
        nodes = self.nodes
        if nodes.ndim != 2 or nodes.shape[1] != 4 or nodes.shape[0] == 0 or nodes.dtype != np.int32:
            raise ValueError("forest node table of the wrong shape or type")
        if self.leaf32.ndim != 2 or self.leaf32.shape != self.leaf64.shape or self.leaf32.shape[1] != self.class_count:
            raise ValueError("forest leaf tables of inconsistent sizes")
        if not (0 < self.class_count <= 4096 and 0 < self.feature_count <= 1 << 16):
            raise ValueError(f"forest with {self.class_count} classes and {self.feature_count} features")
        n = nodes.shape[0]
        feature, first, row = (nodes[:, i].astype(np.int64) for i in (1, 2, 3))
        index = np.arange(n)
        leaf = feature == LEAF
        inner_ok = (feature >= 0) & (feature < self.feature_count) & (first > index) & (first + 1 < n) & (row == -1)
        leaf_ok = (first == index) & (row >= 0) & (row < self.leaf32.shape[0]) & np.isnan(self.thresholds)
        if not np.all(np.where(leaf, leaf_ok, inner_ok)):
            raise ValueError("forest nodes point out of range or backwards (a crafted or damaged forest)")
        ends = self.forest_ends.astype(np.int64)
        if self.roots.ndim != 1 or self.roots.size == 0 or np.any((self.roots < 0) | (self.roots >= n)) \
                or ends.ndim != 1 or ends.size == 0 or np.any(np.diff(ends) <= 0) or ends[0] <= 0 \
                or ends[-1] != self.roots.size:
            raise ValueError("forest roots or tree counts out of range")
        return self

    @property
    def thresholds(self) -> np.ndarray:
        """The float32 threshold of every node (NaN for leaves)."""
        return np.ascontiguousarray(self.nodes[:, 0]).view(np.float32)

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
        for forest in forests:
            if forest.labels != first.labels or forest.feature_count != first.feature_count:
                raise ProjectError(f"{where}: forests disagree on labels or feature count")
        trees = [tree for forest in forests for tree in forest.trees]
        threshold, feature, child, row, leaf64, roots = _flatten(trees, len(first.labels), where)
        bits = np.where(feature == LEAF, _NAN_BITS, _float32_ceiling(threshold).view(np.int32))
        ends = np.cumsum([len(forest.trees) for forest in forests])
        return cls(np.stack([bits, feature, child, row], axis=1).astype(np.int32), leaf64.astype(np.float32),
                   leaf64, roots.astype(np.int32), ends.astype(np.int32), len(first.labels), first.feature_count)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n, classes)`` float32 for a float32 feature matrix ``(n, features)``."""
        x = np.asarray(features, np.float32)
        if x.ndim != 2 or x.shape[1] != self.feature_count:
            raise ValueError(f"expected (n, {self.feature_count}) features, got {x.shape}")
        return self.predict_planar(np.ascontiguousarray(x.T))

    def predict_planar(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n, classes)`` float32 for float32 features ``(features, n)``, one row a feature."""
        x = np.ascontiguousarray(features, np.float32)
        if x.ndim != 2 or x.shape[0] != self.feature_count:
            raise ValueError(f"expected ({self.feature_count}, n) features, got {x.shape}")
        out = np.empty((x.shape[1], self.class_count), np.float32)
        _predict(x, np.ascontiguousarray(self.nodes), self.leaf32, self.leaf64, self.roots, self.forest_ends,
                 self._bit_tables, out)
        return out

    @cached_property
    def _bit_tables(self) -> tuple[np.ndarray, ...]:
        """The QuickScorer tables of the trees of at most 64 leaves (:func:`backend.compute.forest_bits.leaf_bits`)."""
        return leaf_bits(self.nodes, self.roots, self.leaf32, self.leaf64)


def _flatten(trees: list[Tree], classes: int, where: str) -> tuple[np.ndarray, ...]:
    """All trees, one after the other, each breadth-first (so that the two children of a node are neighbours):
    the columns of the node table (threshold, feature, first child, leaf row), the leaves' class weights
    and each tree's root. Array operations over all trees at once: a Python loop over the nodes took 0.3 s
    per 100-tree forest and, holding the interpreter lock, stalled the window's events after each training."""
    topology = np.concatenate([np.asarray(tree.topology, np.int64) for tree in trees])
    params = np.concatenate([np.asarray(tree.parameters, np.float64) for tree in trees])
    sizes = np.array([tree.topology.size for tree in trees])
    param_sizes = np.array([tree.parameters.size for tree in trees])
    starts, param_starts = np.cumsum(sizes) - sizes, np.cumsum(param_sizes) - param_sizes
    order, tree_of = _breadth_first(topology, starts, sizes, where)
    inner = topology[order] == THRESHOLD_NODE
    address = topology[order + 1]
    if address.min() < 0 or np.any(np.where(inner, address + 1, address + classes) >= param_sizes[tree_of]):
        raise ValueError("tree parameters out of range")
    address += param_starts[tree_of]
    number = np.full(topology.size, -1, np.int64)
    number[order] = np.arange(order.size)
    split = order[inner]
    threshold = np.zeros(order.size)
    threshold[inner] = params[address[inner] + 1]
    feature = np.full(order.size, LEAF, np.int64)
    feature[inner] = topology[split + 4]
    child = np.arange(order.size)  # a leaf is its own child
    child[inner] = number[topology[split + 2] + starts[tree_of[inner]]]
    row = np.where(inner, -1, np.cumsum(~inner) - 1)
    leaves = params[address[~inner, None] + 1 + np.arange(classes)]
    return threshold, feature, child, row, leaves, number[starts + 2]


def _breadth_first(topology: np.ndarray, starts: np.ndarray, sizes: np.ndarray, where: str) -> tuple[np.ndarray, ...]:
    """The positions of every tree's nodes in ``topology`` (the trees' topologies one after the other, tree i
    from ``starts[i]``), tree by tree, each breadth-first from its root (its position 2); and each one's tree."""
    if sizes.min() < 4:
        raise ValueError("tree nodes out of range")
    seen = np.zeros(topology.size, bool)
    frontier, tree = starts + 2, np.arange(starts.size)
    seen[frontier] = True
    visited = frontier.size
    levels, level_trees = [], []
    while frontier.size:
        levels.append(frontier)
        level_trees.append(tree)
        kinds = topology[frontier]
        unsupported = kinds[(kinds != THRESHOLD_NODE) & (kinds != LEAF_NODE)]
        if unsupported.size:
            raise ProjectError(
                f"{where}: forest node type {int(unsupported[0])} is not supported (only threshold and leaf nodes)"
            )
        inner = kinds == THRESHOLD_NODE
        split, tree = frontier[inner], tree[inner]
        if np.any(split - starts[tree] + 4 >= sizes[tree]):
            raise ValueError("tree nodes out of range")
        children = topology[split[:, None] + _CHILDREN]  # first and second child of each, within its tree
        if np.any((children < 2) | (children >= sizes[tree, None] - 1)):
            raise ValueError("tree nodes out of range")
        frontier, tree = (children + starts[tree, None]).ravel(), np.repeat(tree, 2)
        if seen[frontier].any():
            raise ValueError("a tree node is reached twice")
        seen[frontier] = True
        visited += frontier.size
        if np.count_nonzero(seen) != visited:  # the same node twice in this level
            raise ValueError("a tree node is reached twice")
    by_tree = np.argsort(np.concatenate(level_trees), kind="stable")  # keeps each tree's breadth-first order
    return np.concatenate(levels)[by_tree], np.concatenate(level_trees)[by_tree]


_CHILDREN = np.array([2, 3])  # where a threshold node keeps its children's positions


@kernel(nogil=True, boundscheck=False, inline="always")
def _step(node, column, child_at, thresholds, x, row_start):  # pragma: no cover - compiled
    """The next node (times 4, an offset into the node table) of a walk at ``node`` for the voxel at
    ``row_start``; ``column`` is the node's feature field (a leaf's LEAF becomes column 0, and a leaf never
    moves). All indices are unsigned, which spares numba's negative-index checks."""
    column = np.uint64(column) & np.uint64(0x7FFFFFFF)
    return np.uint64(4 * (child_at[node] + np.int32(x[row_start + column] >= thresholds[node])))


@kernel(nogil=True, boundscheck=False, inline="always")
def _walk8(table, thresholds, x, root, row0, columns, leaves):  # pragma: no cover - compiled
    """Eight neighbouring voxels walk one tree together (their paths are alike and independent)."""
    feature_at, child_at, row_at = table[1:], table[2:], table[3:]  # node fields at an offset of 4 * node
    a = b = c = d = e = g = h = k = np.uint64(4 * root)
    fa = fb = fc = fd = fe = fg = fh = fk = feature_at[a]
    r1 = row0 + columns  # the other voxels' rows, added up in unsigned arithmetic
    r2 = r1 + columns
    r3 = r2 + columns
    r4 = r3 + columns
    r5 = r4 + columns
    r6 = r5 + columns
    r7 = r6 + columns
    while (fa & fb & fc & fd & fe & fg & fh & fk) >= 0:  # some voxel is not at a leaf yet
        a = _step(a, fa, child_at, thresholds, x, row0)
        b = _step(b, fb, child_at, thresholds, x, r1)
        c = _step(c, fc, child_at, thresholds, x, r2)
        d = _step(d, fd, child_at, thresholds, x, r3)
        e = _step(e, fe, child_at, thresholds, x, r4)
        g = _step(g, fg, child_at, thresholds, x, r5)
        h = _step(h, fh, child_at, thresholds, x, r6)
        k = _step(k, fk, child_at, thresholds, x, r7)
        fa, fb, fc, fd = feature_at[a], feature_at[b], feature_at[c], feature_at[d]
        fe, fg, fh, fk = feature_at[e], feature_at[g], feature_at[h], feature_at[k]
    leaves[0], leaves[1], leaves[2], leaves[3] = row_at[a], row_at[b], row_at[c], row_at[d]
    leaves[4], leaves[5], leaves[6], leaves[7] = row_at[e], row_at[g], row_at[h], row_at[k]


@kernel(nogil=True, boundscheck=False)
def _walk_each(table, thresholds, x, root, row0, columns, m, leaves):  # pragma: no cover - compiled
    """The leaf rows of ``m`` voxels (fewer than eight), one after the other."""
    feature_at, child_at, row_at = table[1:], table[2:], table[3:]
    for j in range(m):
        node = np.uint64(4 * root)
        while feature_at[node] >= 0:
            node = _step(node, feature_at[node], child_at, thresholds, x, row0 + np.uint64(j) * columns)
        leaves[j] = row_at[node]


@kernel(nogil=True, boundscheck=False, inline="always")
def _accumulate(rows, m, leaf32, leaf64, acc, weight):  # pragma: no cover - compiled
    """Add one tree's leaves (``rows``) as vigra does: class weights in float32, their total in float64, class by
    class. ``acc`` is (classes, voxels), so each class is one vectorised loop over the voxels."""
    if leaf32.shape[1] == 2:  # the usual case, unrolled
        for j in range(m):
            row = rows[j]
            acc[0, j] += leaf32[row, 0]
            acc[1, j] += leaf32[row, 1]
            weight[j] = (weight[j] + leaf64[row, 0]) + leaf64[row, 1]
        return
    for j in range(m):
        row = rows[j]
        for c in range(leaf32.shape[1]):
            acc[c, j] += leaf32[row, c]
            weight[j] += leaf64[row, c]


@kernel(nogil=True, boundscheck=False)
def _predict(x2, nodes, leaf32, leaf64, roots, forest_ends, bits, out):  # pragma: no cover - compiled
    """Each forest's average of its trees' normalised leaves, averaged over forests by tree count (vigra's
    arithmetic), for planar features ``x2`` (feature-major); rows with a NaN feature get zeros, as in vigra.
    Voxels go in chunks of ``CHUNK``: trees of at most 64 leaves by QuickScorer (:mod:`backend.compute.forest_bits`),
    larger ones walked eight voxels at a time over the chunk's features copied into rows. For forests whose
    leaves are each one class alone, the small trees' leaves are counted as votes per class (exact sums)."""
    by_bits, class_bits, one_hot = bits[6], bits[7], bits[8]
    columns, n = x2.shape
    x, table = x2.reshape(-1), nodes.reshape(-1)
    thresholds = table.view(np.float32)
    classes, chunk = leaf32.shape[1], CHUNK
    acc = np.zeros((classes, chunk), np.float32)
    combined = np.zeros((classes, chunk), np.float32)
    weight = np.zeros(chunk, np.float64)
    valid = np.zeros(chunk, np.bool_)
    masks = np.zeros(2 * chunk, np.uint32)
    votes = np.zeros((classes, chunk), np.uint32)
    rows = np.zeros(chunk, np.uint64)
    walked = np.zeros(8, np.int32)
    chunk_rows = np.zeros(chunk * columns, np.float32)
    step = np.uint64(columns)
    walks = not np.all(by_bits)
    for i0 in range(0, n, chunk):
        m = min(chunk, n - i0)
        valid[:] = True
        for col in range(columns):
            base = np.uint64(col) * np.uint64(n) + np.uint64(i0)
            for j in range(m):
                if np.isnan(x[base + np.uint64(j)]):
                    valid[j] = False
            if walks:
                for j in range(m):
                    chunk_rows[np.uint64(j) * step + np.uint64(col)] = x[base + np.uint64(j)]
        combined[:] = 0
        first = 0
        for f in range(forest_ends.size):
            acc[:] = 0
            weight[:] = 0
            votes[:] = 0
            for t in range(first, forest_ends[f]):
                if by_bits[t]:
                    exit_bits(x, n, i0, m, bits, t, masks)
                    if one_hot:
                        vote(masks, m, class_bits, t, votes)
                        continue
                    exit_rows(masks, m, bits[5], t, rows)
                else:
                    for j0 in range(0, m, 8):
                        if m - j0 >= 8:
                            _walk8(table, thresholds, chunk_rows, roots[t], np.uint64(j0) * step, step, walked)
                        else:
                            _walk_each(table, thresholds, chunk_rows, roots[t], np.uint64(j0) * step, step,
                                       m - j0, walked)
                        for j in range(min(8, m - j0)):
                            rows[j0 + j] = walked[j]
                _accumulate(rows, m, leaf32, leaf64, acc, weight)
            trees = np.float32(forest_ends[f] - first)
            if one_hot:  # every vote is a whole 1.0, so adding them up in any order is exact
                voted = np.float64(np.sum(by_bits[first:forest_ends[f]]))
                for j in range(m):
                    weight[j] += voted
                    for c in range(classes):
                        acc[c, j] += np.float32(votes[c, j])
            for c in range(classes):
                for j in range(m):
                    if valid[j]:
                        combined[c, j] += (acc[c, j] / np.float32(weight[j])) * trees
            first = forest_ends[f]
        for j in range(m):
            for c in range(classes):
                out[i0 + j, c] = combined[c, j] / np.float32(roots.size)
