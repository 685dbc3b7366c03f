import numpy as np
import pytest

from backend.compute.threshold import ThresholdSettings, settings_fingerprint, smooth, threshold_frame


def _probs(shape, blobs):
    p = np.zeros(shape + (2,), np.float32)
    for (z, y, x), r, value in blobs:
        zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
        inside = (zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        p[..., 1][inside] = value
    p[..., 0] = 1 - p[..., 1]
    return p


def test_simple_threshold_with_size_filter_2d():
    p = _probs((1, 40, 40), [((0, 10, 10), 4, 0.9), ((0, 30, 30), 1, 0.9), ((0, 10, 30), 5, 0.6)])
    s = ThresholdSettings(method=0, low=0.5, min_size=10, max_size=1000, sigmas=(0.0, 0.0, 0.0), channel=1)
    labels = threshold_frame(p, s)
    assert labels.dtype == np.uint32
    assert labels.max() == 2  # the 5-pixel blob is too small
    assert labels[0, 10, 30] == 1 and labels[0, 10, 10] == 2 and labels[0, 30, 30] == 0  # scan order


def test_four_and_six_connectivity():
    p = np.zeros((1, 5, 5, 1), np.float32)
    p[0, 1, 1] = p[0, 2, 2] = 1  # diagonal neighbours are separate objects
    s = ThresholdSettings(low=0.5, min_size=1, sigmas=(0, 0, 0))
    assert threshold_frame(p, s).max() == 2
    v = np.zeros((3, 3, 3, 1), np.float32)
    v[0, 1, 1] = v[1, 1, 1] = v[2, 2, 2] = 1
    assert threshold_frame(v, s).max() == 2


def test_hysteresis_keeps_low_regions_with_a_core():
    p = _probs((1, 40, 60), [((0, 20, 15), 8, 0.6), ((0, 20, 45), 8, 0.6)])
    p[0, 18:22, 13:17, 1] = 0.95  # only the left blob has a core
    s = ThresholdSettings(method=1, low=0.5, high=0.8, min_size=5, sigmas=(0, 0, 0), channel=1, core_channel=1)
    labels = threshold_frame(p, s)
    assert labels.max() == 1 and labels[0, 20, 15] == 1 and labels[0, 20, 45] == 0
    assert (labels == 1).sum() == (p[0, ..., 1] >= 0.5).sum() // 2


def test_smoothing_and_parameters():
    p = _probs((1, 30, 30), [((0, 15, 15), 3, 1.0)])
    smoothed = smooth(p[..., 1], (1.0, 2.0, 2.0))
    assert smoothed.max() < 1.0 and smoothed.sum() == pytest.approx(p[..., 1].sum(), rel=1e-4)
    assert np.array_equal(smooth(p[..., 1], (0.05, 2.0, 2.0)), p[..., 1])
    assert settings_fingerprint(ThresholdSettings()) != settings_fingerprint(ThresholdSettings(low=0.4))
    with pytest.raises(ValueError, match="channel 5"):
        threshold_frame(p, ThresholdSettings(channel=5))


def test_simple_thresholding_never_reads_the_core_channel():
    frame = np.zeros((1, 8, 8, 1), np.float32)
    frame[0, 2:5, 2:5, 0] = 1
    simple = ThresholdSettings(channel=0, core_channel=3, min_size=1, sigmas=(0, 0, 0))
    assert threshold_frame(frame, simple).max() == 1  # a one-channel map thresholds whatever the core channel says
    with pytest.raises(ValueError, match="core channel 3"):
        threshold_frame(frame, ThresholdSettings(method=1, channel=0, core_channel=3, sigmas=(0, 0, 0)))
