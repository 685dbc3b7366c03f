"""Warm-up of a fresh compute process: every compiled kernel runs once on a tiny image.

numba loads (or compiles) each kernel on its first call, which costs a few hundred milliseconds per
process. Doing that when the process starts keeps the user's first visible blocks at full speed.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from backend.compute.features import FEATURE_IDS, FeatureSet, FeatureSpec
from backend.compute.forest import LEAF, CompiledForests
from backend.compute.pipeline import BlockTask, Pipeline

log = logging.getLogger(__name__)
_SCALES = (0.7, 1.6)  # one below and one above 1, the two code paths of the second filter stage


def _one_leaf_forest(feature_count: int) -> CompiledForests:
    """A forest of one tree that is a single leaf: predicts 0.5 / 0.5 from any features."""
    leaf = np.full((1, 2), 0.5)
    return CompiledForests(
        nodes=np.array([[np.float32(np.nan).view(np.int32), LEAF, 0, 0]], np.int32), leaf32=leaf.astype(np.float32),
        leaf64=leaf, roots=np.zeros(1, np.int32), forest_ends=np.ones(1, np.int32), class_count=2,
        feature_count=feature_count)


def _tiny_pipeline(volumetric: bool) -> Pipeline:
    specs = tuple(FeatureSpec(f, s, not volumetric) for f in FEATURE_IDS for s in _SCALES)
    features = FeatureSet(specs, 1, volumetric)
    return Pipeline(features, _one_leaf_forest(features.column_count), (1, 2), 2)


def warm_up() -> float:
    """Run the 2D and 3D feature, row-copy and forest kernels once on small images; returns the seconds it took."""
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    try:
        for volumetric in (True, False):
            image = (24, 24, 24) if volumetric else (1, 24, 24)
            raw = rng.integers(0, 255, image + (1,)).astype(np.uint8)
            target = ((8, 12), (4, 20), (4, 20)) if volumetric else ((0, 1), (4, 20), (4, 20))
            pipeline = _tiny_pipeline(volumetric)
            for kind in ("Probabilities", "Features"):  # Features: the copy into rows, as training's samples use
                pipeline.run(BlockTask("warm-up", kind, raw, (0, 0, 0), image, target, ""), {})
    except Exception:  # never stop a worker from starting; real blocks will report the problem
        log.exception("warm-up failed")
    return time.perf_counter() - started


__all__ = ["warm_up"]
