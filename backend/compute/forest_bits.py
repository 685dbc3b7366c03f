"""QuickScorer for the small trees of a forest (Lucchese et al., 2015): which leaf each voxel reaches, found
for many voxels at once without walking the trees.

For a tree of at most 64 leaves numbered left to right, each inner node has a mask that clears the leaves of
its first child's subtree: the leaves a voxel that goes right at that node cannot reach. A voxel's leaf is the
lowest bit left after every inner node has cleared its mask for the voxels that go right there. Each node
costs the same few vector instructions for a run of voxels, with no data-dependent branch, where a walk costs
a chain of dependent loads per voxel. The features must be planar (one row a feature), so that a node reads
one feature of many neighbouring voxels at once.
"""

from __future__ import annotations

import numba.extending
import numpy as np
from llvmlite import ir as llvm_ir

from backend.compute.kernel_cache import kernel

LEAF = np.int32(-(2**31))  # the feature field of a leaf in the node table of backend.compute.forest
CHUNK = 256  # voxels predicted together: their features stay in the first-level cache


def leaf_bits(nodes: np.ndarray, roots: np.ndarray, leaf32: np.ndarray, leaf64: np.ndarray) -> tuple:
    """QuickScorer's tables for the trees of at most 64 leaves: the feature, threshold, word and mask of each of
    their inner nodes (tree by tree), each tree's first such node, each leaf's row by tree and in-order rank (64 a
    tree and one more, so that any rank a mask gives stays inside), which trees use them, the leaves of each class
    by tree and word, and whether every leaf is one class alone (then each tree adds exactly 1 to one class, and
    counting the votes gives vigra's sums exactly). A node's mask clears the leaves of its first child's subtree
    (the leaves a voxel that goes right cannot reach) in the two 32-bit words of a tree's leaves. Array operations
    over a tree level at a time; if trees share nodes (only in a crafted table) every tree is walked instead."""
    thresholds = np.ascontiguousarray(nodes[:, 0]).view(np.float32)
    feature, first, row = (nodes[:, i].astype(np.int64) for i in (1, 2, 3))
    leaf = feature == LEAF
    levels, frontier, tree = [], roots.astype(np.int64), np.arange(roots.size)
    while frontier.size and sum(level.size for level, _ in levels) <= nodes.shape[0]:
        levels.append((frontier, tree))
        inner = ~leaf[frontier]
        frontier = (first[frontier[inner], None] + np.arange(2)).ravel()
        tree = np.repeat(tree[inner], 2)
    every, owner = (np.concatenate(parts) for parts in zip(*levels))
    leaf_rows = np.zeros(roots.size * 64 + 1, np.int32)
    if frontier.size or np.unique(every).size != every.size:
        no_bits = np.zeros(0, np.int64)
        return (no_bits, np.zeros(0, np.float32), no_bits, np.zeros(0, np.uint32), np.zeros(roots.size + 1, np.int64),
                leaf_rows, np.zeros(roots.size, np.bool_), np.zeros((roots.size, 2, leaf64.shape[1]), np.uint32),
                False)
    count = leaf.astype(np.int64)
    for level, _ in reversed(levels):
        split = level[~leaf[level]]
        count[split] = count[first[split]] + count[first[split] + 1]
    offset = np.zeros(nodes.shape[0], np.int64)
    for level, _ in levels:
        split = level[~leaf[level]]
        offset[first[split]] = offset[split]
        offset[first[split] + 1] = offset[split] + count[first[split]]
    by_bits = count[roots] <= 64
    order = np.lexsort((every, owner))
    every, owner = every[order], owner[order]
    inner = ~leaf[every] & by_bits[owner]
    split, left = every[inner], first[every[inner]]
    low, high = offset[left], offset[left] + count[left]  # the leaves a voxel going right cannot reach
    parts = [(np.arange(split.size), np.full(split.size, word), np.clip(low - 32 * word, 0, 32),
              np.clip(high - 32 * word, 0, 32)) for word in (0, 1)]
    position, word, low, high = (np.concatenate(p) for p in zip(*parts))
    used = np.argsort(np.where(high > low, position, split.size), kind="stable")[: np.count_nonzero(high > low)]
    position, word, low, high = position[used], word[used], low[used], high[used]
    cleared = ((np.uint64(1) << (high - low).astype(np.uint64)) - np.uint64(1)) << low.astype(np.uint64)
    node = split[position]
    starts = np.concatenate([[0], np.cumsum(np.bincount(owner[inner][position], minlength=roots.size))])
    ends = leaf[every] & by_bits[owner]
    leaf_rows[owner[ends] * 64 + offset[every[ends]]] = row[every[ends]]
    one_hot = bool(np.all((leaf64 == 0) | (leaf64 == 1)) and np.all(leaf64.sum(axis=1) == 1)
                   and np.array_equal(leaf32, leaf64.astype(np.float32)))
    class_bits = np.zeros((roots.size, 2, leaf64.shape[1]), np.uint32)
    rank = offset[every[ends]]
    np.bitwise_or.at(class_bits, (owner[ends], rank // 32, np.argmax(leaf64[row[every[ends]]], axis=1)),
                     (np.uint32(1) << (rank % 32).astype(np.uint32)))
    return (feature[node], thresholds[node], word.astype(np.int64), (~cleared).astype(np.uint32),
            starts.astype(np.int64), leaf_rows, by_bits, class_bits, one_hot)


@numba.extending.intrinsic
def _trailing_zeros(typingctx, value):  # pragma: no cover - compiled
    """The number of trailing zero bits of an unsigned integer (one instruction)."""
    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], llvm_ir.Constant(llvm_ir.IntType(1), 0))
    return value(value), codegen


@kernel(nogil=True, boundscheck=False, inline="always")
def exit_bits(x, n, i0, m, bits, tree, masks):  # pragma: no cover - compiled
    """QuickScorer for voxels ``i0 .. i0 + m`` of planar features ``x`` (feature-major, ``n`` voxels a feature) in
    one tree of at most 64 leaves: each inner node clears the bits of the leaves left of it (in-order, in two
    32-bit words ``masks[:CHUNK]`` and ``masks[CHUNK:]``) for the voxels that go right; the lowest bit left
    is a voxel's leaf."""
    bit_feature, bit_threshold, bit_word, bit_mask, bit_start = bits[:5]
    everything, chunk = np.uint32(0xFFFFFFFF), np.uint64(CHUNK)
    for j in range(2 * CHUNK):
        masks[j] = everything
    start = np.uint64(i0)
    for k in range(bit_start[tree], bit_start[tree + 1]):
        base = np.uint64(bit_feature[k]) * np.uint64(n) + start
        word = np.uint64(bit_word[k]) * chunk
        threshold, mask = bit_threshold[k], bit_mask[k]
        for j in range(m):
            masks[word + np.uint64(j)] &= mask if x[base + np.uint64(j)] >= threshold else everything


@kernel(nogil=True, boundscheck=False, inline="always")
def exit_rows(masks, m, leaf_rows, tree, rows):  # pragma: no cover - compiled
    """The leaf row of each voxel from its leaf bits (:func:`exit_bits`)."""
    table, chunk = np.uint64(tree) * np.uint64(64), np.uint64(CHUNK)
    for j in range(m):
        low, high = masks[j], masks[chunk + np.uint64(j)]
        rank = _trailing_zeros(low) if low else np.uint32(32) + _trailing_zeros(high)
        rows[j] = leaf_rows[table + np.uint64(rank)]


@kernel(nogil=True, boundscheck=False, inline="always")
def vote(masks, m, class_bits, tree, votes):  # pragma: no cover - compiled
    """Count each voxel's leaf (:func:`exit_bits`) as a vote for its class, for forests of one-class leaves."""
    zero, chunk = np.uint32(0), np.uint64(CHUNK)
    for c in range(class_bits.shape[2]):
        low_class, high_class = class_bits[tree, 0, c], class_bits[tree, 1, c]
        for j in range(m):
            low, high = masks[j], masks[chunk + np.uint64(j)]
            low_bit = low & (zero - low)
            high_bit = (high & (zero - high)) if low_bit == zero else zero
            votes[c, j] += np.uint32(((low_bit & low_class) | (high_bit & high_class)) != zero)
