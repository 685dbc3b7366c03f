"""The compute processes' feature memo: a tile recomputed under a new classifier skips its features, with the same
results bit for bit; bounded in bytes, keyed on everything the features depend on and never on the classifier."""

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from backend.compute.feature_memo import FeatureMemo, process_memo
from backend.compute.features import FEATURE_IDS, FeatureSet
from backend.compute.forest import CompiledForests
from backend.compute.pipeline import BlockTask, Pipeline
from backend.config import load_config
from backend.io.forest_io import forest_from_sklearn

IMAGE = (24, 40, 40)
SELECTION = np.array([[True, True], [True, False], [False, True], [False, False], [True, False], [False, False]])


def _features(scales=(0.7, 1.6)) -> FeatureSet:
    return FeatureSet.from_selection(FEATURE_IDS, scales, SELECTION, None, 1, True)


def _pipeline(seed: int, features: FeatureSet | None = None) -> Pipeline:
    fs = features or _features()
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, fs.column_count)).astype(np.float32)
    y = 1 + (x[:, seed % fs.column_count] > 0).astype(int)
    rf = RandomForestClassifier(n_estimators=5, random_state=seed).fit(x, y)
    return Pipeline(fs, CompiledForests.build([forest_from_sklearn(rf, fs.column_count)]), (1, 2), 2)


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 255, IMAGE + (1,)).astype(np.uint8)


def _tile(volume: np.ndarray, pipeline: Pipeline, target, kind="Probabilities") -> BlockTask:
    """A viewer-like task: ``target`` with the pipeline's halo, as the gateway cuts it."""
    start = tuple(max(0, a - h) for (a, _), h in zip(target, pipeline.halo))
    stop = tuple(min(n, b + h) for (_, b), h, n in zip(target, pipeline.halo, IMAGE))
    raw = volume[tuple(slice(a, b) for a, b in zip(start, stop))]
    return BlockTask("k", kind, raw, start, IMAGE, target, pipeline.fingerprint())


XY = ((10, 11), (8, 24), (8, 24))
XZ = ((4, 20), (12, 13), (0, 16))


@pytest.mark.parametrize("kind", ["Probabilities", "Features", "Probabilities+Features+Uncertainty"])
def test_a_tile_under_a_new_classifier_skips_its_features_with_the_same_results(volume, kind, monkeypatch):
    memo, workspace = FeatureMemo(2**20), {}
    computed = []
    compute_planar = FeatureSet.compute_planar
    monkeypatch.setattr(FeatureSet, "compute_planar", lambda *a, **k: computed.append(1) or compute_planar(*a, **k))
    for seed in (1, 2, 3):  # three classifiers in turn, as live training makes them
        pipeline = _pipeline(seed)
        for target in (XY, XZ):
            task = _tile(volume, pipeline, target, kind)
            with_memo = pipeline.run(task, workspace, memo)
            without = pipeline.run(task, {}, FeatureMemo(0))
            assert with_memo.dtype == without.dtype and np.array_equal(with_memo, without)
    assert (memo.misses, memo.hits) == (2, 4)
    assert len(computed) == 2 + 6  # the memo's two, and each run without it


def test_what_the_forest_and_later_runs_do_with_the_features_never_reaches_the_memo(volume):
    memo, workspace = FeatureMemo(2**20), {}
    first, second = _pipeline(1), _pipeline(2)
    expected = second.run(_tile(volume, second, XY), {}, FeatureMemo(0))
    first.run(_tile(volume, first, XY), workspace, memo)
    workspace["planar"][:] = np.nan  # the process's scratch buffer, reused by the next block
    first.run(_tile(volume, first, XZ), workspace, memo)  # another block overwrites it too
    assert np.array_equal(second.run(_tile(volume, second, XY), workspace, memo), expected)
    assert memo.hits == 1


def test_the_key_holds_the_voxels_the_place_and_the_feature_selection(volume):
    memo = FeatureMemo(2**20)
    pipeline = _pipeline(1)
    pipeline.run(_tile(volume, pipeline, XY), {}, memo)
    changed = volume.copy()
    changed[10, 16, 16, 0] ^= 1  # one voxel
    pipeline.run(_tile(changed, pipeline, XY), {}, memo)
    pipeline.run(_tile(volume, pipeline, ((11, 12), (8, 24), (8, 24))), {}, memo)  # the next slice
    other_scales = _pipeline(1, _features((0.7, 1.0)))  # same columns, other scales
    other = other_scales.run(_tile(volume, other_scales, XY), {}, memo)
    assert (memo.misses, memo.hits) == (4, 0)
    assert np.array_equal(other, other_scales.run(_tile(volume, other_scales, XY), {}, FeatureMemo(0)))


def test_the_memo_is_bounded_in_bytes_least_recently_used_out_and_keeps_no_large_block(volume):
    pipeline = _pipeline(1)
    tile_bytes = 16 * 16 * pipeline.features.column_count * 4
    memo = FeatureMemo(16 * tile_bytes)  # sixteen tiles: the least a memo holds
    assert memo.keeps(tile_bytes) and not memo.keeps(tile_bytes + 1)
    slices = [((z, z + 1), (8, 24), (8, 24)) for z in range(4, 21)]

    def run(target) -> None:
        pipeline.run(_tile(volume, pipeline, target), {}, memo)

    for target in slices[:16]:
        run(target)
    run(slices[0])  # a hit: now the most recently used
    run(slices[16])  # the seventeenth pushes out the least recently used, slices[1]
    assert (memo.hits, memo.misses, memo.held_bytes) == (1, 17, 16 * tile_bytes)
    run(slices[0])
    run(slices[16])
    run(slices[1])
    assert (memo.hits, memo.misses) == (3, 18)
    big = ((0, 24), (0, 40), (0, 40))  # an export-like block: over a sixteenth of the memo, never kept
    run(big)
    run(big)
    assert (memo.hits, memo.misses, memo.held_bytes) == (3, 18, 16 * tile_bytes)


def test_the_process_memo_is_sized_by_the_configuration(monkeypatch):
    assert load_config().worker.feature_memo_mb == 64
    process_memo.cache_clear()
    monkeypatch.setenv("ILASTIK_DESKTOP__WORKER__FEATURE_MEMO_MB", "0.5")
    try:
        assert process_memo().capacity_bytes == 2**19 and process_memo() is process_memo()
    finally:
        process_memo.cache_clear()
