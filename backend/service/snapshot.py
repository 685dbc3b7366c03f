"""One immutable view of what a gateway computes: the data, the pipeline, their fingerprints, the block grids.

A block's cache key, its task and the check of its cached value all come from the snapshot the block was
first asked under, so a classifier swapped meanwhile (live training) can never put one pipeline's result
under another's key. The gateway swaps snapshots whole.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from backend.cache.block_cache import block_key
from backend.compute.geometry import BlockGrid, Roi
from backend.compute.pipeline import Pipeline


@dataclass(frozen=True)
class PipelineSnapshot:
    """Data and pipeline fingerprints with the pipeline itself; block grids are made on first use."""

    data_fingerprint: str
    pipeline: Pipeline
    fingerprint: str
    spatial_shape: tuple[int, int, int, int]
    _grids: dict = field(default_factory=dict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def key(self, kind: str, roi: Roi) -> str:
        """The cache key of the block of ``kind`` at ``roi`` under this snapshot."""
        return block_key(self.data_fingerprint, self.fingerprint, kind, roi)

    def grid(self, block_shape: tuple[int, int, int, int]) -> BlockGrid:
        """The block grid of ``block_shape`` (tzyx) with this pipeline's halo."""
        with self._lock:
            grid = self._grids.get(block_shape)
            if grid is None:
                grid = self._grids[block_shape] = BlockGrid(self.spatial_shape, block_shape, (0,) + self.pipeline.halo)
            return grid

    def expected(self, kind: str, roi: Roi) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of a valid result of ``kind`` for the block at ``roi``."""
        return (1, *roi.shape[1:], self.pipeline.channels(kind)), self.pipeline.dtype(kind)
