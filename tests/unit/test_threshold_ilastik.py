"""Object IDs as ilastik's OpThresholdTwoLevels gives them, checked against an independent implementation written
here from the rules (a raster-order flood fill, the size filter without renumbering, hysteresis cores), not
calling the code under test: random 2D, 3D and time-series volumes, simple and hysteresis, the same and another
core channel, size filters that drop objects in the middle of the ID range, consecutive IDs on and off."""

from collections import deque

import numpy as np
import pytest
from scipy import ndimage

from backend.compute.threshold import ThresholdSettings, smooth, threshold_frame
from backend.errors import UserError
from backend.service.objects import request_frame

NO_SMOOTHING = (0.0, 0.0, 0.0)


def flood_components(mask: np.ndarray) -> np.ndarray:
    """Connected components of a (z, y, x) mask by flood fill, numbered in raster order of their first voxel,
    face neighbours only (4 in a single slice, 6 in 3D)."""
    labels = np.zeros(mask.shape, np.int64)
    steps = [(-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1)]
    count = 0
    for start in zip(*np.nonzero(mask)):  # np.nonzero walks in raster order
        if labels[start]:
            continue
        count += 1
        labels[start] = count
        todo = deque([start])
        while todo:
            z, y, x = todo.popleft()
            for dz, dy, dx in steps:
                n = (z + dz, y + dy, x + dx)
                if all(0 <= i < s for i, s in zip(n, mask.shape)) and mask[n] and not labels[n]:
                    labels[n] = count
                    todo.append(n)
    return labels


def passing_size(labels: np.ndarray, min_size: int, max_size: int) -> set[int]:
    """IDs whose component has min_size to max_size voxels."""
    ids, sizes = np.unique(labels[labels > 0], return_counts=True)
    return {int(i) for i, n in zip(ids, sizes) if min_size <= n <= max_size}


def reference_objects(channels: np.ndarray, s: ThresholdSettings) -> np.ndarray:
    """The rules of common.md on already smoothed (z, y, x, c) channels."""
    final = channels[..., s.channel]
    core = channels[..., s.core_channel]
    if s.method == 1 and s.core_channel != s.channel:
        final = final + core
    labels = flood_components(final >= s.low)
    kept = passing_size(labels, s.min_size, s.max_size)
    if s.method == 1:
        cores = flood_components(core >= s.high)
        good_cores = np.isin(cores, list(passing_size(cores, s.min_size, s.max_size)))
        kept &= {int(i) for i in np.unique(labels[good_cores])}
    out = np.where(np.isin(labels, list(kept)), labels, 0)
    if s.relabel:
        new_ids = {old: new for new, old in enumerate(sorted(kept), start=1)}
        out = np.vectorize(lambda v: new_ids.get(v, 0))(out) if kept else out
    return out


def random_probabilities(shape: tuple[int, int, int], channels: int, seed: int) -> np.ndarray:
    """Blobby probabilities in 0..1 (smoothed noise, rescaled per channel)."""
    rng = np.random.default_rng(seed)
    noise = rng.random(shape + (channels,))
    blurred = np.stack([ndimage.gaussian_filter(noise[..., c], 1.2) for c in range(channels)], axis=-1)
    low, high = blurred.min(axis=(0, 1, 2)), blurred.max(axis=(0, 1, 2))
    return ((blurred - low) / (high - low)).astype(np.float32)


def sizes(labels: np.ndarray) -> dict[int, int]:
    """Voxels per object ID."""
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist()))


def has_gaps(labels: np.ndarray) -> bool:
    """Whether the IDs skip numbers (an object in the middle of the range was removed)."""
    ids = np.unique(labels[labels > 0])
    return ids.size > 0 and ids[-1] != ids.size


CASES = [  # shape, settings (sigmas 0: exact comparison)
    ((1, 48, 48), dict(method=0, low=0.55, min_size=4, max_size=60)),
    ((1, 48, 48), dict(method=1, low=0.5, high=0.7, min_size=3, max_size=200, channel=0, core_channel=0)),
    ((1, 48, 48), dict(method=1, low=1.1, high=0.7, min_size=3, max_size=400, channel=0, core_channel=1)),
    ((8, 20, 20), dict(method=0, low=0.6, min_size=3, max_size=40)),
    ((8, 20, 20), dict(method=1, low=0.65, high=0.8, min_size=3, max_size=200, channel=1, core_channel=1)),
    ((8, 20, 20), dict(method=1, low=1.25, high=0.72, min_size=3, max_size=200, channel=1, core_channel=0)),
]


@pytest.mark.parametrize("relabel", [False, True])
@pytest.mark.parametrize("seed", [1, 3])
@pytest.mark.parametrize("shape, params", CASES)
def test_ids_and_sizes_match_the_independent_implementation(shape, params, seed, relabel):
    p = random_probabilities(shape, 2, seed)
    s = ThresholdSettings(sigmas=NO_SMOOTHING, relabel=relabel, **params)
    ours = threshold_frame(p, s)
    expected = reference_objects(p, s)
    assert ours.dtype == np.uint32 and ours.shape == shape
    assert len(sizes(expected)) >= 2  # the case has objects to compare
    assert sizes(ours) == sizes(expected)
    assert np.array_equal(ours, expected)
    if relabel:
        assert not has_gaps(ours)


@pytest.mark.parametrize("shape, params", [CASES[0], CASES[3]])
def test_the_size_filter_keeps_ilastiks_ids_with_gaps(shape, params):
    p = random_probabilities(shape, 2, 1)
    s = ThresholdSettings(sigmas=NO_SMOOTHING, **params)
    ours = threshold_frame(p, s)
    everything = flood_components(p[..., 0] >= s.low)
    assert has_gaps(ours)  # objects in the middle of the ID range were dropped, the others keep their IDs
    for object_id in sizes(ours):
        assert np.array_equal(ours == object_id, everything == object_id)
    relabelled = threshold_frame(p, ThresholdSettings(sigmas=NO_SMOOTHING, relabel=True, **params))
    assert sorted(sizes(relabelled)) == list(range(1, len(sizes(ours)) + 1))
    assert list(sizes(relabelled).values()) == list(sizes(ours).values())  # same objects, same order


@pytest.mark.parametrize("relabel", [False, True])
def test_time_series_frames_are_labelled_each_on_their_own(relabel):
    series = random_probabilities((4, 1, 40, 40), 2, 7)  # t as the first axis, one z slice
    s = ThresholdSettings(method=1, low=0.5, high=0.7, min_size=3, max_size=150, sigmas=NO_SMOOTHING,
                          channel=1, core_channel=1, relabel=relabel)
    for t, frame in enumerate(series):
        ours = threshold_frame(frame, s)
        assert np.array_equal(ours, reference_objects(frame, s)), f"frame {t}"
        assert ours.max() == 0 or ours[ours > 0].min() >= 1  # IDs start again in every frame


@pytest.mark.parametrize("shape, params, sigmas", [
    (CASES[0][0], CASES[0][1], (1.0, 1.5, 1.5)),
    (CASES[2][0], CASES[2][1], (1.0, 0.8, 0.8)),
    (CASES[4][0], CASES[4][1], (0.7, 1.0, 1.0)),
    (CASES[5][0], CASES[5][1], (1.0, 1.0, 0.5)),
])
def test_smoothed_inputs_give_the_same_objects_as_labelling_our_smoothed_channels(shape, params, sigmas):
    p = random_probabilities(shape, 2, 3)
    s = ThresholdSettings(sigmas=sigmas, **params)
    smoothed = np.stack([smooth(p[..., c], sigmas) for c in range(2)], axis=-1)
    assert not np.array_equal(smoothed, p)
    ours = threshold_frame(p, s)
    assert len(sizes(ours)) >= 1
    assert np.array_equal(ours, reference_objects(smoothed, s))


def test_smoothing_is_off_when_any_sigma_is_below_a_tenth():
    p = random_probabilities((4, 16, 16), 1, 5)
    s = ThresholdSettings(low=0.6, min_size=1, sigmas=(0.09, 2.0, 2.0))
    assert np.array_equal(threshold_frame(p, s), reference_objects(p, s))


def test_graph_cut_and_identity_preserving_hysteresis_are_refused():
    p = random_probabilities((1, 8, 8), 1, 1)
    for method, name in ((2, "graph-cut thresholding"), (3, "identity-preserving hysteresis")):
        with pytest.raises(ValueError, match=f"CurOperator is {method} \\({name}\\)"):
            threshold_frame(p, ThresholdSettings(method=method))
        with pytest.raises(UserError, match=f"CurOperator is {method} \\({name}\\)"):  # before any gateway work
            request_frame(None, 0, ThresholdSettings(method=method))  # (the web service answers 400 with it)
