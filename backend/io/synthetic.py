"""Synthetic microscopy-like volumes (bright blobs on a noisy background) with ground truth and labels, and
the one builder of trained synthetic projects (the demo, the benchmarks and the tests use it)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np
from scipy import ndimage

from backend.compute.features import FEATURE_IDS
from backend.io.project import FeatureSelection, open_project
from backend.io.project_pipeline import build_pipeline
from backend.io.project_writer import LabelBlock, write_project
from backend.io.sources import open_source
from backend.io.training import labelled_samples, train_classifier
from backend.io.writers import axistags_json


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


@dataclass(frozen=True)
class SyntheticProject:
    """What to build: the volume, its labels, the feature selection (rows: FEATURE_IDS) and the forests."""

    shape: tuple[int, int, int]
    selection: tuple[tuple[bool, ...], ...]
    scales: tuple[float, ...]
    seed: int = 0
    density: float = 2e-4
    label_count: int = 6
    label_size: int = 24
    label_seed: int = 1
    trees: int = 100
    forests: int = 2
    train_seed: int = 0
    chunks: tuple[int, int, int] = (16, 64, 64)
    label_names: tuple[str, str] = ("Background", "Cells")
    label_colors: tuple[tuple[int, int, int], ...] = ((255, 225, 25), (0, 130, 200))
    nickname: str = "raw"


def write_synthetic_project(directory: str, spec: SyntheticProject, project_name: str = "project.ilp",
                            raw_name: str = "raw.h5") -> tuple[str, np.ndarray]:
    """Write the raw volume and a project trained on its labels into ``directory``; (project path, image)."""
    raw = os.path.join(directory, raw_name)
    path = os.path.join(directory, project_name)
    image, mask = blob_volume(spec.shape, seed=spec.seed, density=spec.density)
    with h5py.File(raw, "w") as f:
        chunks = tuple(min(c, n) for c, n in zip(spec.chunks, image.shape))
        f.create_dataset("data", data=image, chunks=chunks).attrs["axistags"] = axistags_json("zyx")
    features = FeatureSelection(FEATURE_IDS, tuple(spec.scales), tuple(tuple(r) for r in spec.selection),
                                (False,) * len(spec.scales))
    args = dict(raw_path=f"{raw_name}/data", axes="zyx", shape=spec.shape, features=features,
                label_names=spec.label_names, label_colors=spec.label_colors, nickname=spec.nickname,
                label_blocks=label_slabs(mask, count=spec.label_count, size=spec.label_size, seed=spec.label_seed))
    write_project(path, classifier=None, **args)
    project = open_project(path)
    x, y = labelled_samples(project, open_source(raw + "/data"))
    names = build_pipeline(project, 1, True, require_classifier=False).features.column_names()
    classifier = train_classifier(x, y, names, trees=spec.trees, forests=spec.forests, seed=spec.train_seed)
    write_project(path, classifier=classifier, row_count=len(y), **args)
    return path, image
