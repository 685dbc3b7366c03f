import numpy as np
import pytest

from backend.compute.features import FEATURE_IDS, FeatureSet, normalise_feature_name, presmoothing_sigma
from backend.compute.filters import gaussian_kernel, kernel_radius

SCALES = (0.3, 0.7, 1.0, 1.6, 3.5, 5.0, 10.0)


def test_halo_radii_match_the_spec_table():
    expected = {0.3: 3, 0.7: 4, 1.0: 7, 1.6: 7, 3.5: 15, 5.0: 20, 10.0: 38}
    for scale, radius in expected.items():
        fs = FeatureSet.from_selection(FEATURE_IDS, [scale], np.ones((6, 1), bool), None, 1, True)
        assert fs.halo == (radius, radius, radius)


def test_kernel_normalisation_like_vigra():
    x = np.arange(-kernel_radius(1.3, 2.0), kernel_radius(1.3, 2.0) + 1)
    assert gaussian_kernel(1.3, 0, 2.0).sum() == pytest.approx(1.0)
    assert np.sum(gaussian_kernel(1.3, 1, 2.0) * -x) == pytest.approx(1.0)
    assert np.sum(gaussian_kernel(1.3, 2, 2.0) * x * x / 2) == pytest.approx(1.0)
    assert gaussian_kernel(1.3, 1, 2.0).sum() == pytest.approx(0.0, abs=1e-12)
    assert kernel_radius(0.1, 2.0) == 1 and kernel_radius(9.95, 3.5) == 35


def test_presmoothing_sigma():
    assert presmoothing_sigma(0.7) == 0.7 and presmoothing_sigma(1.0) == 1.0
    assert presmoothing_sigma(5.0) == pytest.approx(np.sqrt(24))


def test_column_order_and_names():
    matrix = np.zeros((6, 7), bool)
    matrix[0, 0] = matrix[4, 1] = matrix[5, 6] = True
    fs = FeatureSet.from_selection(FEATURE_IDS, SCALES, matrix, [True] * 7, 2, False)
    assert fs.column_count == 2 + 4 + 4
    names = fs.column_names()
    assert names[0] == "Gaussian Smoothing (σ=0.3) in 2D [0]"
    assert names[2] == "Structure Tensor Eigenvalues (σ=0.7) in 2D [0]"
    assert normalise_feature_name(names[5]) == ("Structure Tensor Eigenvalues", 0.7, 3)


def _random_selection(rng, volumetric):
    matrix = rng.random((6, 7)) < 0.25
    matrix[rng.integers(6), rng.integers(4)] = True
    matrix[:, 5:] = False  # keep the halo small enough for small test images
    in2d = list(rng.random(7) < 0.5) if volumetric else None
    return matrix, in2d


@pytest.mark.parametrize("seed", range(8))
def test_blockwise_with_halo_equals_whole_image(seed):
    rng = np.random.default_rng(seed)
    volumetric = seed % 2 == 0
    shape = (int(rng.integers(9, 24)) if volumetric else 1, int(rng.integers(20, 50)), int(rng.integers(20, 50)))
    channels = int(rng.integers(1, 3))
    image = (rng.random(shape + (channels,)) * 255).astype(np.float32)
    matrix, in2d = _random_selection(rng, volumetric)
    fs = FeatureSet.from_selection(FEATURE_IDS, SCALES, matrix, in2d, channels, volumetric)
    whole = fs.compute(image, (0, 0, 0), shape, [(0, n) for n in shape])
    block = [int(rng.integers(min(4, n), n + 1)) for n in shape]
    for z0 in range(0, shape[0], block[0]):
        for y0 in range(0, shape[1], block[1]):
            for x0 in range(0, shape[2], block[2]):
                target = [(a, min(a + b, n)) for a, b, n in zip((z0, y0, x0), block, shape)]
                lo = [max(0, a - h) for (a, _), h in zip(target, fs.halo)]
                hi = [min(n, b + h) for (_, b), h, n in zip(target, fs.halo, shape)]
                raw = image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
                got = fs.compute(raw, lo, shape, target)
                expected = whole[tuple(slice(a, b) for a, b in target)]
                assert np.array_equal(got, expected), (seed, target)


def test_2d_per_slice_equals_2d_image():
    rng = np.random.default_rng(5)
    vol = (rng.random((3, 30, 31, 1)) * 100).astype(np.float32)
    matrix = np.ones((6, 7), bool)
    matrix[:, 4:] = False
    fs3 = FeatureSet.from_selection(FEATURE_IDS, SCALES, matrix, [True] * 7, 1, True)
    fs2 = FeatureSet.from_selection(FEATURE_IDS, SCALES, matrix, None, 1, False)
    stacked = fs3.compute(vol, (0, 0, 0), vol.shape[:3], [(0, n) for n in vol.shape[:3]])
    for z in range(3):
        one = fs2.compute(vol[z:z + 1], (0, 0, 0), (1, 30, 31), [(0, 1), (0, 30), (0, 31)])
        assert np.array_equal(stacked[z:z + 1], one)
