"""Objects from probabilities, as ilastik 1.4's thresholding applet computes them for one time frame.

The rules follow lazyflow's ``OpThresholdTwoLevels``: object IDs are the connected-component IDs of the
thresholded mask (raster order of each component's first voxel, direct neighbourhood), kept through
the size filter with their gaps (``OpFilterLabels`` never relabels). In hysteresis mode with two
different channels, the low threshold applies to the sum of both smoothed channels.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from backend.compute.filters import Patch, gaussian_kernel

SMOOTHING_WINDOW = 2.0
MAX_SIGMA = 50.0  # a smoothing sigma beyond this blurs any image flat and needs a huge halo
METHODS = ("simple", "hysteresis", "graph-cut thresholding", "identity-preserving hysteresis")  # ilastik's
# CurOperator 0 to 3 (lazyflow's ThresholdMethod); the first two are computed here
SUPPORTED_METHODS = (0, 1)


@dataclass(frozen=True)
class ThresholdSettings:
    """ilastik's thresholding parameters (defaults are ilastik 1.4's)."""

    method: int = 0  # ilastik's CurOperator: 0 simple, 1 hysteresis (2 and 3 are read, not computed)
    min_size: int = 10
    max_size: int = 1_000_000
    high: float = 0.8
    low: float = 0.5
    sigmas: tuple[float, float, float] = (1.0, 1.0, 1.0)  # z, y, x
    channel: int = 0
    core_channel: int = 0
    relabel: bool = False  # consecutive IDs 1..n instead of ilastik's (our option, not ilastik's)


def default_channel(class_names: list[str]) -> int:
    """The first class that is not background (by name): the channel the window thresholds by default."""
    for index, name in enumerate(class_names):
        if name.strip().lower() not in ("background", "bg"):
            return index
    return 0


def default_settings(class_names: list[str]) -> ThresholdSettings:
    """ilastik's default thresholding on the first class that is not background (core channel too): what the
    window and headless runs use for a project that saved no thresholding."""
    channel = default_channel(class_names)
    return ThresholdSettings(channel=channel, core_channel=channel)


def unsupported_method(settings: ThresholdSettings) -> str | None:
    """Why ``settings`` cannot be computed here (ilastik's graph-cut or identity-preserving method), in words
    naming the project setting, or None when they can."""
    if settings.method in SUPPORTED_METHODS:
        return None
    name = METHODS[settings.method] if 0 <= settings.method < len(METHODS) else "unknown"
    return (f"ThresholdTwoLevels/CurOperator is {settings.method} ({name}), which ilastik-desktop does not "
            "support; choose Simple or Hysteresis")


def settings_fingerprint(settings: ThresholdSettings) -> str:
    """A digest of the parameters, for cache keys."""
    return hashlib.sha1(json.dumps(asdict(settings), sort_keys=True).encode()).hexdigest()[:12]


def smooth(channel: np.ndarray, sigmas: tuple[float, float, float]) -> np.ndarray:
    """Gaussian smoothing of one (z, y, x) channel, one sigma per axis; none if any sigma is below 0.1."""
    data = np.ascontiguousarray(channel, np.float32)
    if min(sigmas) < 0.1:
        return data
    axes = (0, 1, 2) if data.shape[0] > 1 else (1, 2)
    patch = Patch(data, (0, 0, 0), data.shape)
    kernels = {a: gaussian_kernel(float(sigmas[a]), 0, SMOOTHING_WINDOW) for a in axes}
    return patch.separable(kernels, tuple((0, n) for n in data.shape)).data


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of a (z, y, x) mask as ilastik labels them: direct neighbourhood (4 within a single
    slice, 6 in 3D), IDs 1..n in raster order of each component's first voxel; and their count."""
    from scipy import ndimage  # here, not at the top: 0.1 s that every worker's start-up would wait for

    structure = ndimage.generate_binary_structure(3, 1)
    if mask.shape[0] == 1:
        structure[0] = structure[2] = False  # 4-neighbourhood within the single slice
    return ndimage.label(mask, structure=structure)


def _size_filter(labels: np.ndarray, count: int, min_size: int, max_size: int) -> np.ndarray:
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = (sizes >= min_size) & (sizes <= max_size)
    keep[0] = False
    return keep[labels]


def used_channels(settings: ThresholdSettings) -> tuple[tuple[str, int], ...]:
    """The channels the thresholding reads, by role: the channel, and the core channel in hysteresis mode only
    (simple thresholding never reads the core channel, so it need not exist)."""
    used = (("channel", settings.channel),)
    return used + (("core channel", settings.core_channel),) if settings.method == 1 else used


def check_channels(channels: int, settings: ThresholdSettings) -> None:
    """ValueError when a channel the thresholding reads is not one of the frame's ``channels``."""
    for name, index in used_channels(settings):
        if not 0 <= index < channels:
            raise ValueError(f"threshold {name} {index} does not exist (the frame has {channels} channels)")


def threshold_frame(probabilities: np.ndarray, settings: ThresholdSettings) -> np.ndarray:
    """uint32 object labels (0 = background) of one (z, y, x, channels) frame, with ilastik's IDs."""
    reason = unsupported_method(settings)
    if reason is not None:
        raise ValueError(reason)
    check_channels(probabilities.shape[-1], settings)
    final_input = smooth(probabilities[..., settings.channel], settings.sigmas)
    if settings.method == 1 and settings.core_channel != settings.channel:
        core_input = smooth(probabilities[..., settings.core_channel], settings.sigmas)
        final_input = final_input + core_input  # lazyflow's opSumInputs
    elif settings.method == 1:
        core_input = final_input
    labels, count = label_components(final_input >= settings.low)
    keep = _size_filter(labels, count, settings.min_size, settings.max_size)
    if settings.method == 1:
        core_labels, core_count = label_components(core_input >= settings.high)
        cores = _size_filter(core_labels, core_count, settings.min_size, settings.max_size)
        seeded = np.zeros(count + 1, bool)
        seeded[labels[cores]] = True
        seeded[0] = False
        keep &= seeded[labels]
    labels[~keep] = 0
    if settings.relabel:
        labels, _ = label_components(keep)
    return labels.astype(np.uint32, copy=False)
