"""Eigenvalues of symmetric 2x2 and 3x3 tensor fields, as vigra computes them, largest first."""

from __future__ import annotations

import numba
import numpy as np


def eigenvalues_2d(a00: np.ndarray, a01: np.ndarray, a11: np.ndarray, out: np.ndarray) -> None:
    """Eigenvalues (descending) of 2x2 symmetric tensors into ``out`` (float32, shape ``(2,) + a00.shape``)."""
    a00 = a00.astype(np.float64)
    a11 = a11.astype(np.float64)
    d = np.hypot(a00 - a11, 2.0 * a01.astype(np.float64))
    trace = a00 + a11
    out[0] = 0.5 * (trace + d)
    out[1] = 0.5 * (trace - d)


@numba.njit(cache=True, nogil=True)
def _eig3(a00, a01, a02, a11, a12, a22, out):  # pragma: no cover - compiled
    inv3 = 1.0 / 3.0
    root3 = np.sqrt(3.0)
    for i in range(a00.size):
        x00 = np.float64(a00[i])
        x01 = np.float64(a01[i])
        x02 = np.float64(a02[i])
        x11 = np.float64(a11[i])
        x12 = np.float64(a12[i])
        x22 = np.float64(a22[i])
        c0 = x00 * x11 * x22 + 2.0 * x01 * x02 * x12 - x00 * x12 * x12 - x11 * x02 * x02 - x22 * x01 * x01
        c1 = x00 * x11 - x01 * x01 + x00 * x22 - x02 * x02 + x11 * x22 - x12 * x12
        c2 = x00 + x11 + x22
        c2_3 = c2 * inv3
        a_3 = (c1 - c2 * c2_3) * inv3
        if a_3 > 0.0:
            a_3 = 0.0
        mb_2 = 0.5 * (c0 + c2_3 * (2.0 * c2_3 * c2_3 - c1))
        q = mb_2 * mb_2 + a_3 * a_3 * a_3
        if q > 0.0:
            q = 0.0
        magnitude = np.sqrt(-a_3)
        angle = np.arctan2(np.sqrt(-q), mb_2) * inv3
        cs = np.cos(angle)
        sn = np.sin(angle)
        r0 = np.float32(c2_3 + 2.0 * magnitude * cs)
        r1 = np.float32(c2_3 - magnitude * (cs + root3 * sn))
        r2 = np.float32(c2_3 - magnitude * (cs - root3 * sn))
        if r0 < r1:
            r0, r1 = r1, r0
        if r0 < r2:
            r0, r2 = r2, r0
        if r1 < r2:
            r1, r2 = r2, r1
        out[0, i] = r0
        out[1, i] = r1
        out[2, i] = r2


def eigenvalues_3d(a00, a01, a02, a11, a12, a22, out: np.ndarray) -> None:
    """Eigenvalues (descending) of 3x3 symmetric tensors into ``out`` (float32, ``(3,) + a00.shape``)."""
    parts = [np.ascontiguousarray(a, np.float32).reshape(-1) for a in (a00, a01, a02, a11, a12, a22)]
    _eig3(*parts, out.reshape(3, -1))
