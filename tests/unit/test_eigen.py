import numpy as np

from backend.compute.eigen import eigenvalues_2d, eigenvalues_3d


def _symmetric(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, 3, 3)).astype(np.float32)
    m = (m + m.transpose(0, 2, 1)) / 2
    g = rng.normal(size=(n // 4, 3)).astype(np.float32)  # rank one, as structure tensors of a single edge
    m[: n // 4] = g[:, :, None] * g[:, None, :]
    m[n // 4: n // 4 + 50] = np.diag([2.0, 2.0, 1.0])  # two equal eigenvalues, the angle at pi
    m[n // 4 + 50: n // 4 + 100] = np.diag([1.0, 2.0, 2.0])  # and at 0
    m[n // 4 + 100: n // 4 + 150] = 0  # all equal
    m[n // 4 + 150: n // 4 + 200] = np.diag([1.0, 1.0, -2.0])  # traceless: the angle alone sets them
    m[n // 4 + 200: n // 4 + 250] = np.diag([2.0, -1.0, -1.0])
    return m


def _fields(m: np.ndarray) -> list[np.ndarray]:
    return [np.ascontiguousarray(m[:, i, j]) for i, j in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))]


def test_3x3_eigenvalues_match_lapack_sorted_descending():
    m = _symmetric(0, 4000)
    out = np.empty((3, len(m)), np.float32)
    eigenvalues_3d(*_fields(m), out)
    expected = np.linalg.eigvalsh(m.astype(np.float64))[:, ::-1].T
    scale = np.abs(expected).max(axis=0) + 1e-30
    assert np.all(np.abs(out - expected) <= 1e-7 * scale)  # float32 rounding of a float64 computation
    assert np.all(out[0] >= out[1]) and np.all(out[1] >= out[2])


def test_2x2_eigenvalues_match_lapack():
    m = _symmetric(1, 1000)[:, :2, :2]
    out = np.empty((2, len(m)), np.float32)
    eigenvalues_2d(m[:, 0, 0], m[:, 0, 1], m[:, 1, 1], out)
    expected = np.linalg.eigvalsh(m.astype(np.float64))[:, ::-1].T
    assert np.allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_nan_tensors_give_nan_eigenvalues():
    m = _symmetric(2, 8)
    m[3, 1, 1] = np.nan
    out = np.empty((3, len(m)), np.float32)
    eigenvalues_3d(*_fields(m), out)
    assert np.all(np.isnan(out[:, 3])) and np.isfinite(np.delete(out, 3, axis=1)).all()
