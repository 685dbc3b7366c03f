"""vigra-exact Gaussian kernels and separable filtering of image patches with mirror borders.

A :class:`Patch` is an array that covers a box of a larger image. Filtering it mirrors only at the
true image border and crops wherever the neighbouring voxels are real, so a block computed with
enough halo equals the whole-image computation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from backend.compute.kernel_cache import kernel


def kernel_radius(sigma: float, window_ratio: float) -> int:
    """vigra's kernel radius: ``int(window_ratio * sigma + 0.5)``, at least 1."""
    return max(1, int(window_ratio * sigma + 0.5))


@lru_cache(maxsize=256)
def gaussian_kernel(sigma: float, order: int, window_ratio: float) -> np.ndarray:
    """The samples of vigra's ``Kernel1D.initGaussianDerivative`` (order 0, 1 or 2), as float64."""
    radius = kernel_radius(sigma, window_ratio)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(x * x * (-0.5 / (sigma * sigma)))
    if order == 0:
        k = g / g.sum()
    else:
        k = -x * g if order == 1 else (x * x / (sigma * sigma) - 1.0) * g
        k = k - k.sum() / (2.0 * radius + 1.0)
        moment = np.sum(k * (-x) ** order) / math.factorial(order)
        k = k / moment
    k.setflags(write=False)
    return k


def kernel_symmetry(kernel: np.ndarray) -> int:
    """1 for an exactly symmetric kernel, -1 for an exactly antisymmetric one, 0 otherwise."""
    if np.array_equal(kernel, kernel[::-1]):
        return 1
    return -1 if np.array_equal(kernel, -kernel[::-1]) else 0


def valid_convolve(src: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """Convolve a 3-d float32 array along ``axis``, keeping only the part where the kernel fits.

    Sums are accumulated in float64 as vigra does. Taps an exactly (anti)symmetric kernel has in pairs
    are folded (one multiplication per pair), which leaves the float32 results unchanged in practice.
    """
    r = len(kernel) // 2
    shape = list(src.shape)
    shape[axis] -= 2 * r
    out = np.empty(shape, np.float32)
    (_convolve_outer, _convolve_middle, _convolve_inner)[axis](src, kernel, kernel_symmetry(kernel), out)
    return out


@kernel(nogil=True, inline="always")
def _tap_pairs(kernel, sign):  # pragma: no cover - compiled
    """How many leading taps are paired with their mirror image (all other taps are taken singly)."""
    return kernel.size // 2 if sign != 0 else 0


@kernel(nogil=True)
def _convolve_outer(src, kernel, sign, out):  # pragma: no cover - compiled
    n, pairs = kernel.size, _tap_pairs(kernel, sign)
    depth, rows, cols = out.shape
    acc = np.empty((rows, cols), np.float64)
    for z in range(depth):
        acc[:] = 0.0
        for j in range(pairs):
            w, near, far = kernel[j], src[z + n - 1 - j], src[z + j]
            for y in range(rows):
                for x in range(cols):
                    acc[y, x] += w * (np.float64(near[y, x]) + sign * np.float64(far[y, x]))
        for j in range(pairs, n - pairs):
            w, plane = kernel[j], src[z + n - 1 - j]
            for y in range(rows):
                for x in range(cols):
                    acc[y, x] += w * plane[y, x]
        for y in range(rows):
            for x in range(cols):
                out[z, y, x] = acc[y, x]


@kernel(nogil=True)
def _convolve_middle(src, kernel, sign, out):  # pragma: no cover - compiled
    n, pairs = kernel.size, _tap_pairs(kernel, sign)
    depth, rows, cols = out.shape
    acc = np.empty(cols, np.float64)
    for z in range(depth):
        for y in range(rows):
            acc[:] = 0.0
            for j in range(pairs):
                w, near, far = kernel[j], src[z, y + n - 1 - j], src[z, y + j]
                for x in range(cols):
                    acc[x] += w * (np.float64(near[x]) + sign * np.float64(far[x]))
            for j in range(pairs, n - pairs):
                w, line = kernel[j], src[z, y + n - 1 - j]
                for x in range(cols):
                    acc[x] += w * line[x]
            for x in range(cols):
                out[z, y, x] = acc[x]


@kernel(nogil=True)
def _convolve_inner(src, kernel, sign, out):  # pragma: no cover - compiled
    """Along the contiguous axis. Taps address shifted views of each line: with an index that cannot be
    negative, numba leaves out its wrap-around code and the loops vectorise (4x faster)."""
    n, pairs = kernel.size, _tap_pairs(kernel, sign)
    depth, rows, cols = out.shape
    acc = np.empty(cols, np.float64)
    for z in range(depth):
        for y in range(rows):
            line, result = src[z, y], out[z, y]
            acc[:] = 0.0
            for j in range(pairs):
                w, near, far = kernel[j], line[n - 1 - j:], line[j:]
                for x in range(cols):
                    acc[x] += w * (np.float64(near[x]) + sign * np.float64(far[x]))
            for j in range(pairs, n - pairs):
                w, shifted = kernel[j], line[n - 1 - j:]
                for x in range(cols):
                    acc[x] += w * shifted[x]
            for x in range(cols):
                result[x] = acc[x]


@dataclass
class Patch:
    """A float32 array covering ``[start, start + data.shape)`` of an image of shape ``image``."""

    data: np.ndarray
    start: tuple[int, ...]
    image: tuple[int, ...]

    @property
    def stop(self) -> tuple[int, ...]:
        return tuple(a + s for a, s in zip(self.start, self.data.shape))

    def crop(self, axis: int, lo: int, hi: int) -> Patch:
        """The part of this patch between global coordinates ``lo`` and ``hi`` along ``axis``."""
        a = self.start[axis]
        index = [slice(None)] * self.data.ndim
        index[axis] = slice(lo - a, hi - a)
        start = list(self.start)
        start[axis] = lo
        return Patch(self.data[tuple(index)], tuple(start), self.image)

    def convolve(self, axis: int, kernel: np.ndarray, lo: int, hi: int) -> Patch:
        """Convolve along ``axis`` and keep the result for global coordinates ``[lo, hi)``."""
        r = len(kernel) // 2
        a, b, n = self.start[axis], self.stop[axis], self.image[axis]
        pad_lo, pad_hi = max(0, r - (lo - a)), max(0, hi + r - b)
        if (pad_lo and a != 0) or (pad_hi and b != n):
            raise ValueError(f"patch {a}..{b} lacks halo for {lo}..{hi} with radius {r} on axis {axis}")
        src = self.crop(axis, max(a, lo - r), min(b, hi + r)).data
        if pad_lo or pad_hi:
            widths = [(0, 0)] * src.ndim
            widths[axis] = (pad_lo, pad_hi)
            src = np.pad(src, widths, mode="reflect")
        start = list(self.start)
        start[axis] = lo
        return Patch(valid_convolve(src, kernel, axis), tuple(start), self.image)

    def separable(self, kernels: dict[int, np.ndarray], target: tuple[tuple[int, int], ...]) -> Patch:
        """Apply one kernel per listed axis and crop every axis to ``target`` (global lo, hi)."""
        patch = self
        for axis, (lo, hi) in enumerate(target):
            if axis in kernels:
                patch = patch.convolve(axis, kernels[axis], lo, hi)
            else:
                patch = patch.crop(axis, lo, hi)
        return patch


class SeparableBank:
    """Separable Gaussian-derivative filters of one patch, sharing the passes they have in common.

    ``get(orders)`` returns the patch filtered with a derivative of the given order along each
    filtered axis (0 = smoothing) at one scale, cropped to ``target``.
    """

    def __init__(self, patch: Patch, axes: tuple[int, ...], sigma: float, window_ratio: float,
                 target: tuple[tuple[int, int], ...]):
        self.patch = patch
        self.axes = axes
        self.sigma = sigma
        self.window_ratio = window_ratio
        self.target = target
        self._cache: dict[tuple[int, ...], Patch] = {}

    def get(self, orders: tuple[int, ...]) -> np.ndarray:
        """The filtered data for derivative ``orders`` (one per filtered axis)."""
        return self._prefix(tuple(orders)).data

    def _prefix(self, orders: tuple[int, ...]) -> Patch:
        if not orders:
            return self.patch
        if orders in self._cache:
            return self._cache[orders]
        previous = self._prefix(orders[:-1])
        axis = self.axes[len(orders) - 1]
        kernel = gaussian_kernel(self.sigma, orders[-1], self.window_ratio)
        lo, hi = self.target[axis]
        result = previous.convolve(axis, kernel, lo, hi)
        if len(orders) == len(self.axes):
            for other, (olo, ohi) in enumerate(self.target):
                if other not in self.axes:
                    result = result.crop(other, olo, ohi)
        self._cache[orders] = result
        return result
