"""The built-in demo: a small synthetic 3D volume with a trained ilastik project beside it."""

from __future__ import annotations

import os

import h5py

from backend.errors import UserError
from backend.features import FEATURE_IDS
from backend.project import FeatureSelection, open_project
from backend.project_writer import write_project
from backend.sources import open_source
from backend.synthetic import blob_volume, label_slabs
from backend.training import labelled_samples, train_classifier
from backend.writers import axistags_json

DEMO_SHAPE = (48, 160, 160)
SCALES = (0.3, 0.7, 1.0, 1.6, 3.5, 5.0, 10.0)
# rows follow FEATURE_IDS, columns SCALES: a typical selection of a biologist's first project
DEMO_SELECTION = (
    (False, True, False, True, True, False, False),
    (False, False, True, False, True, False, False),
    (False, False, True, False, True, False, False),
    (False, False, False, True, False, False, False),
    (False, False, False, True, False, False, False),
    (False, False, True, False, True, False, False),
)


def write_demo_project(directory: str, shape: tuple[int, int, int] = DEMO_SHAPE,
                       selection=DEMO_SELECTION, scales=SCALES, trees: int = 100, seed: int = 0) -> str:
    """Write ``demo_raw.h5`` and a trained ``demo.ilp`` into ``directory``; returns the project path."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{directory}: cannot create the demo folder ({exc.strerror})") from None
    raw_path = os.path.join(directory, "demo_raw.h5")
    project_path = os.path.join(directory, "demo.ilp")
    image, mask = blob_volume(shape, seed=seed)
    with h5py.File(raw_path, "w") as f:
        ds = f.create_dataset("data", data=image, chunks=(16, 64, 64))
        ds.attrs["axistags"] = axistags_json("zyx")
    features = FeatureSelection(FEATURE_IDS, tuple(scales), tuple(tuple(r) for r in selection),
                                (False,) * len(scales))
    blocks = label_slabs(mask, seed=seed + 1)
    args = dict(raw_path="demo_raw.h5/data", axes="zyx", shape=shape, features=features,
                label_names=("Background", "Cells"), label_colors=((255, 225, 25), (0, 130, 200)),
                label_blocks=blocks, nickname="demo_raw")
    write_project(project_path, classifier=None, **args)
    project = open_project(project_path)
    source = open_source(raw_path + "/data")
    x, y = labelled_samples(project, source)
    from backend.pipeline import build_pipeline

    names = build_pipeline(project, 1, True, require_classifier=False).features.column_names()
    classifier = train_classifier(x, y, names, trees=trees, seed=seed)
    write_project(project_path, classifier=classifier, row_count=len(y), **args)
    return project_path


__all__ = ["write_demo_project"]
