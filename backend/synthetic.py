"""Synthetic microscopy-like volumes (bright blobs on a noisy background) with ground truth and labels."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from backend.project_writer import LabelBlock


def blob_volume(shape: tuple[int, int, int], seed: int = 0, density: float = 2e-4,
                radius: tuple[float, float] = (3.0, 7.0)) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 image of blurred spheres with noise, and its boolean foreground mask."""
    rng = np.random.default_rng(seed)
    count = max(1, int(density * np.prod(shape)))
    centres = rng.uniform(0, 1, (count, 3)) * np.asarray(shape)
    radii = rng.uniform(*radius, count)
    mask = np.zeros(shape, bool)
    for c, r in zip(centres, radii):
        lo = np.maximum(0, np.floor(c - r)).astype(int)
        hi = np.minimum(shape, np.ceil(c + r + 1)).astype(int)
        zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        inside = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
        mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= inside
    image = ndimage.gaussian_filter(mask.astype(np.float32) * 140.0 + 40.0, 1.5)
    image += rng.normal(0, 18, shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def label_slabs(mask: np.ndarray, count: int = 6, size: int = 24, seed: int = 1) -> list[LabelBlock]:
    """Densely labelled small slabs (1 = background, 2 = foreground), as an annotator's strokes would give."""
    rng = np.random.default_rng(seed)
    blocks = []
    z, y, x = mask.shape
    size = min(size, y, x)
    for _ in range(count):
        z0 = int(rng.integers(0, z))
        y0, x0 = int(rng.integers(0, y - size + 1)), int(rng.integers(0, x - size + 1))
        labels = np.where(mask[z0, y0:y0 + size, x0:x0 + size], 2, 1).astype(np.uint8)
        bounds = ((z0, z0 + 1), (y0, y0 + size), (x0, x0 + size), (0, 1))
        blocks.append(LabelBlock(bounds, labels[None, :, :, None]))
    return blocks
