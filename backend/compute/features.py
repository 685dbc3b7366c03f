"""ilastik's six pixel features, computed exactly as ilastik does (see ilastik-compat.md, section 1).

A :class:`FeatureSet` is the project's feature selection resolved for one image (channels, 2D or 3D)
and lists the feature-matrix columns in ilastik's order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from backend.compute.eigen import eigenvalues_2d, eigenvalues_3d
from backend.compute.filters import Patch, SeparableBank, gaussian_kernel, kernel_radius
from backend.compute.kernel_cache import kernel

FEATURE_IDS = (
    "GaussianSmoothing",
    "LaplacianOfGaussian",
    "GaussianGradientMagnitude",
    "DifferenceOfGaussians",
    "StructureTensorEigenvalues",
    "HessianOfGaussianEigenvalues",
)
DISPLAY_NAMES = {
    "GaussianSmoothing": "Gaussian Smoothing",
    "LaplacianOfGaussian": "Laplacian of Gaussian",
    "GaussianGradientMagnitude": "Gaussian Gradient Magnitude",
    "DifferenceOfGaussians": "Difference of Gaussians",
    "StructureTensorEigenvalues": "Structure Tensor Eigenvalues",
    "HessianOfGaussianEigenvalues": "Hessian of Gaussian Eigenvalues",
}
_EIGEN = ("StructureTensorEigenvalues", "HessianOfGaussianEigenvalues")
PRESMOOTH_WINDOW = 3.5
FEATURE_WINDOW = 2.0


def presmoothing_sigma(sigma: float) -> float:
    """ilastik's first-stage sigma: ``sqrt(sigma**2 - 1)`` above 1, else sigma itself."""
    return math.sqrt(sigma * sigma - 1.0) if sigma > 1.0 else sigma


def scale_fits(shape_zyx: Sequence[int], scale: float) -> tuple[bool, bool]:
    """Whether features at ``scale`` fit an image of ``shape_zyx``: in its yx plane, and along z in 3D
    (ilastik's rule: every extent at least ``ceil(3.5 * scale) + 1``)."""
    needed = math.ceil(scale * PRESMOOTH_WINDOW) + 1
    z, y, x = shape_zyx
    return needed <= min(y, x), needed <= z


def feature_radius(feature_id: str, sigma: float) -> int:
    """How far the second stage of a feature reaches, in voxels."""
    s = min(sigma, 1.0)
    if feature_id == "StructureTensorEigenvalues":
        return kernel_radius(0.5 * s, FEATURE_WINDOW) + kernel_radius(s, FEATURE_WINDOW)
    return kernel_radius(s, FEATURE_WINDOW)


@dataclass(frozen=True)
class FeatureSpec:
    """One selected (feature, scale) pair; ``in_2d`` filters each z slice separately."""

    feature_id: str
    scale: float
    in_2d: bool


@dataclass(frozen=True)
class FeatureSet:
    """The selected features for an image with ``channels`` channels, 3D when ``volumetric``."""

    specs: tuple[FeatureSpec, ...]
    channels: int
    volumetric: bool
    named_in_2d: tuple[bool, ...] = ()

    @classmethod
    def from_selection(
        cls,
        feature_ids: Sequence[str],
        scales: Sequence[float],
        matrix: np.ndarray,
        compute_in_2d: Sequence[bool] | None,
        channels: int,
        volumetric: bool,
    ) -> FeatureSet:
        """Resolve a project's selection matrix for an image; columns follow ilastik's order."""
        in_2d = [not volumetric] * len(scales) if compute_in_2d is None else [bool(v) for v in compute_in_2d]
        specs, named = [], []
        for i, fid in enumerate(feature_ids):
            if fid not in FEATURE_IDS:
                raise ValueError(f"unknown feature '{fid}'")
            for j, scale in enumerate(scales):
                if matrix[i][j]:
                    specs.append(FeatureSpec(fid, float(scale), in_2d[j] or not volumetric))
                    named.append(compute_in_2d is not None and in_2d[j])
        return cls(tuple(specs), int(channels), bool(volumetric), tuple(named))

    def width(self, spec: FeatureSpec) -> int:
        """Number of columns one spec contributes."""
        eig = (2 if spec.in_2d else 3) if spec.feature_id in _EIGEN else 1
        return eig * self.channels

    @property
    def column_count(self) -> int:
        return sum(self.width(s) for s in self.specs)

    def column_names(self) -> list[str]:
        """Column names in ilastik's style, e.g. ``Structure Tensor Eigenvalues (σ=0.7) in 2D [1]``."""
        names = []
        for spec, named_2d in zip(self.specs, self.named_in_2d or [False] * len(self.specs)):
            base = f"{DISPLAY_NAMES[spec.feature_id]} (σ={spec.scale})" + (" in 2D" if named_2d else "")
            n = self.width(spec)
            names.extend([base] if n == 1 else [f"{base} [{k}]" for k in range(n)])
        return names

    @property
    def halo(self) -> tuple[int, int, int]:
        """Voxels of context needed per side along (z, y, x) for exact blockwise results."""
        hz = hyx = 0
        for spec in self.specs:
            r = kernel_radius(presmoothing_sigma(spec.scale), PRESMOOTH_WINDOW)
            r += max(feature_radius(s.feature_id, spec.scale) for s in self.specs if s.scale == spec.scale)
            hyx = max(hyx, r)
            if not spec.in_2d:
                hz = max(hz, r)
        return (hz, hyx, hyx)

    def compute(self, data: np.ndarray, start: Sequence[int], image: Sequence[int],
                target: Sequence[tuple[int, int]]) -> np.ndarray:
        """Feature matrix ``(z, y, x, columns)`` float32 for ``target`` from ``data`` (z, y, x, c).

        ``data`` covers the box at ``start`` of an image of spatial shape ``image`` and must include
        :attr:`halo` around ``target`` wherever the image continues.
        """
        planar = self.compute_planar(data, start, image, target)
        return to_rows(planar, np.empty((planar[0].size, len(planar)), np.float32)).reshape(
            planar.shape[1:] + (len(planar),))

    def compute_planar(self, data: np.ndarray, start: Sequence[int], image: Sequence[int],
                       target: Sequence[tuple[int, int]], out: np.ndarray | None = None) -> np.ndarray:
        """Like :meth:`compute` but shaped ``(columns, z, y, x)``; fills ``out`` if given (must fit)."""
        target = tuple((int(a), int(b)) for a, b in target)
        shape = (self.column_count,) + tuple(b - a for a, b in target)
        out = np.empty(shape, np.float32) if out is None else out.reshape(-1)[: int(np.prod(shape))].reshape(shape)
        offsets = np.cumsum([0] + [self.width(s) for s in self.specs])
        for scale in dict.fromkeys(s.scale for s in self.specs):
            chosen = [(s, int(offsets[i])) for i, s in enumerate(self.specs) if s.scale == scale]
            for c in range(self.channels):
                channel = Patch(np.ascontiguousarray(data[..., c], np.float32), tuple(start), tuple(image))
                _compute_scale(channel, scale, chosen, c, self, target, out)
        return out


def _grown(target, axes, radius, image):
    return tuple(
        (max(0, lo - radius), min(n, hi + radius)) if axis in axes else (lo, hi)
        for axis, ((lo, hi), n) in enumerate(zip(target, image))
    )


def _unit(n: int, axis: int, order: int, other_axis: int | None = None) -> tuple[int, ...]:
    orders = [0] * n
    orders[axis] += order
    if other_axis is not None:
        orders[other_axis] += 1
    return tuple(orders)


def _compute_scale(channel: Patch, scale: float, chosen, c: int, fset: FeatureSet, target, out) -> None:
    in_2d = chosen[0][0].in_2d
    axes = (1, 2) if in_2d else (0, 1, 2)
    s = min(scale, 1.0)
    reach = max(feature_radius(spec.feature_id, scale) for spec, _ in chosen)
    pre_kernel = gaussian_kernel(presmoothing_sigma(scale), 0, PRESMOOTH_WINDOW)
    pre = channel.separable({a: pre_kernel for a in axes}, _grown(target, axes, reach, channel.image))
    bank = SeparableBank(pre, axes, s, FEATURE_WINDOW, target)
    for spec, offset in chosen:
        k = fset.width(spec) // fset.channels
        _feature(spec.feature_id, pre, bank, axes, s, target, out[offset + c * k: offset + (c + 1) * k])


def _feature(fid: str, pre: Patch, bank: SeparableBank, axes, s: float, target, out: np.ndarray) -> None:
    """Write one feature of one channel into ``out`` (its planes, shaped ``(k, z, y, x)``)."""
    n = len(axes)
    if fid == "GaussianSmoothing":
        out[0] = bank.get((0,) * n)
    elif fid == "LaplacianOfGaussian":
        np.copyto(out[0], bank.get(_unit(n, 0, 2)))
        for i in range(1, n):
            out[0] += bank.get(_unit(n, i, 2))
    elif fid == "GaussianGradientMagnitude":
        np.sqrt(sum(np.square(bank.get(_unit(n, i, 1))) for i in range(n)), out=out[0])
    elif fid == "DifferenceOfGaussians":
        narrow = SeparableBank(pre, axes, 0.66 * s, FEATURE_WINDOW, target)
        np.subtract(bank.get((0,) * n), narrow.get((0,) * n), out=out[0])
    elif fid == "HessianOfGaussianEigenvalues":
        comps = {(i, j): bank.get(_unit(n, i, 2) if i == j else _unit(n, i, 1, j))
                 for i in range(n) for j in range(i, n)}
        _eigenvalues(comps, n, out)
    elif fid == "StructureTensorEigenvalues":
        _structure_tensor(pre, axes, s, target, out)
    else:
        raise ValueError(f"unknown feature '{fid}'")


def _structure_tensor(pre: Patch, axes, s: float, target, out: np.ndarray) -> None:
    n = len(axes)
    outer = kernel_radius(s, FEATURE_WINDOW)
    wide = _grown(target, axes, outer, pre.image)
    grads = SeparableBank(pre, axes, 0.5 * s, FEATURE_WINDOW, wide)
    g = [grads.get(_unit(n, i, 1)) for i in range(n)]
    start = tuple(lo for lo, _ in wide)
    smooth = {a: gaussian_kernel(s, 0, FEATURE_WINDOW) for a in axes}
    comps = {
        (i, j): Patch(g[i] * g[j], start, pre.image).separable(smooth, target).data
        for i in range(n) for j in range(i, n)
    }
    _eigenvalues(comps, n, out)


def _eigenvalues(comps: dict[tuple[int, int], np.ndarray], n: int, out: np.ndarray) -> None:
    if n == 2:
        eigenvalues_2d(comps[0, 0], comps[0, 1], comps[1, 1], out)
    else:
        eigenvalues_3d(comps[0, 0], comps[0, 1], comps[0, 2], comps[1, 1], comps[1, 2], comps[2, 2], out)


@kernel(nogil=True)
def _transpose(planar, rows):  # pragma: no cover - compiled
    columns, n = planar.shape
    for i0 in range(0, n, 256):
        i1 = min(n, i0 + 256)
        for f in range(columns):
            for i in range(i0, i1):
                rows[i, f] = planar[f, i]


def to_rows(planar: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Copy planar features ``(columns, ...)`` into a row-major ``(voxels, columns)`` buffer; returns it."""
    _transpose(planar.reshape(len(planar), -1), rows)
    return rows


_NAME = re.compile(r"^(?P<name>.+?) \(σ=(?P<scale>[0-9.eE+-]+)\)(?: in 2D)?(?: \[(?P<index>\d+)\])?$")


def normalise_feature_name(name: str) -> tuple[str, float, int]:
    """(display name, scale, channel index) of an ilastik feature column name, for comparisons."""
    m = _NAME.match(name.strip())
    if not m:
        return (name, 0.0, 0)
    return (m["name"], float(m["scale"]), int(m["index"] or 0))
