"""The built-in demo: a small synthetic 3D volume with a trained ilastik project beside it."""

from __future__ import annotations

import os

from backend.errors import UserError
from backend.io.synthetic import SyntheticProject, write_synthetic_project

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
    spec = SyntheticProject(tuple(shape), tuple(tuple(r) for r in selection), tuple(scales), seed=seed,
                            label_seed=seed + 1, trees=trees, train_seed=seed, nickname="demo_raw")
    return write_synthetic_project(directory, spec, "demo.ilp", "demo_raw.h5")[0]


def open_or_write_demo(directory: str) -> tuple[str, bool]:
    """The demo project in ``directory``: the one there if it was written before (labels painted and saved in it
    are kept), else a new one; returns its path and whether it was written now."""
    project, raw = os.path.join(directory, "demo.ilp"), os.path.join(directory, "demo_raw.h5")
    if os.path.isfile(project) and os.path.isfile(raw):
        return project, False
    return write_demo_project(directory), True


__all__ = ["open_or_write_demo", "write_demo_project"]
