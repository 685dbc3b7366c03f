"""Colouring of layer values as RGBA images (numpy only), for the viewer and the web API."""

from __future__ import annotations

import numpy as np

from backend.compute.geometry import Roi
from backend.io.sources import DataSource


def probability_rgba(values: np.ndarray, color: tuple[int, int, int], opacity: float) -> np.ndarray:
    """A class's probabilities ``(rows, cols)`` as its colour with alpha = probability x opacity."""
    out = np.empty(values.shape + (4,), np.uint8)
    out[..., :3] = color
    out[..., 3] = np.clip(values * (255.0 * opacity), 0, 255).astype(np.uint8)
    return out


def segmentation_rgba(labels: np.ndarray, colors, opacity: float) -> np.ndarray:
    """Labels 1..n in the classes' colours; 0 transparent."""
    table = np.zeros((256, 4), np.uint8)
    for i, color in enumerate(colors[:255]):
        table[i + 1, :3] = color
        table[i + 1, 3] = int(255 * opacity)
    return table[labels.astype(np.uint8)]


def objects_rgba(labels: np.ndarray, opacity: float) -> np.ndarray:
    """Connected components in random but stable colours per label; background transparent."""
    ids = labels.astype(np.uint64)
    hashed = (ids * np.uint64(2654435761)) & np.uint64(0xFFFFFF)
    out = np.empty(labels.shape + (4,), np.uint8)
    out[..., 0] = 64 + (hashed & np.uint64(0x7F))
    out[..., 1] = 64 + ((hashed >> np.uint64(8)) & np.uint64(0x7F))
    out[..., 2] = 64 + ((hashed >> np.uint64(16)) & np.uint64(0x7F))
    out[..., 3] = np.where(labels > 0, int(255 * opacity), 0)
    return out


def blend_classes(probabilities: np.ndarray, colors) -> np.ndarray:
    """Probabilities ``(rows, cols, classes)`` as one RGBA image: each class's colour over the ones before it
    with alpha = its probability, as the viewer stacks the class layers (opaque where the classes sum to 1)."""
    out = np.zeros(probabilities.shape[:2] + (3,), np.float32)
    alpha = np.zeros(probabilities.shape[:2], np.float32)
    for channel, color in enumerate(colors[: probabilities.shape[2]]):
        a = np.clip(probabilities[..., channel].astype(np.float32), 0, 1)
        out = out * (1 - a[..., None]) + np.asarray(color, np.float32) * a[..., None]
        alpha = alpha * (1 - a) + a
    rgba = np.empty(probabilities.shape[:2] + (4,), np.uint8)
    rgba[..., :3] = np.clip(np.round(out / np.maximum(alpha, 1e-6)[..., None]), 0, 255)
    rgba[..., 3] = np.clip(np.round(alpha * 255), 0, 255)
    return rgba


def percentile_range(values: np.ndarray) -> tuple[float, float]:
    """The raw display range that fits ``values``: their 0.1 to 99.9 percentiles (high above low)."""
    low, high = (float(v) for v in np.percentile(values, (0.1, 99.9)))
    return low, high if high > low else low + 1.0


def raw_display_range(source: DataSource) -> tuple[float, float]:
    """The raw data's display range (the window's and the viewer page's): 0-255 for 8-bit data, else the
    0.1-99.9 percentiles of the first time point's middle slice."""
    if source.dtype == np.uint8:
        return (0.0, 255.0)
    _, z, y, x = source.spatial_shape
    return percentile_range(source.read(Roi((0, z // 2, 0, 0), (1, z // 2 + 1, y, x))))
