"""Compute-core benchmark: our headless export vs the vigra reference on the prototype's volume.

    python bench/compute_core.py [--shape Z,Y,X] [--workers 2] [--block_shape Z,Y,X] [--dir bench/out]

Builds the prototype's benchmark (384 x 384 x 192 uint8, 30 3D features at scales 1.0, 3.5, 10.0,
100 trees in 2 forests), times ``ilastik-desktop --headless`` and ``vigra_reference.py --threads 2``
on the same volume and project, checks they agree within ilastik's tolerance, prints JSON and a table.
Then it times the compute core's stages in this one process over the export's blocks: features, forest
(on the planar features, as the export computes them), and what remains of our wall time (I/O, gateway,
cache, start-up). Our kernels are compiled into numba's on-disk cache before anything is timed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backend.compute.geometry import BlockGrid  # noqa: E402
from backend.compute.warmup import warm_up  # noqa: E402
from backend.io.project import open_project  # noqa: E402
from backend.io.project_pipeline import build_pipeline  # noqa: E402
from backend.io.sources import open_source  # noqa: E402
from backend.processes import keep_freed_memory  # noqa: E402
from backend.service.export import default_block_shape  # noqa: E402
from bench.common import PROTOTYPE_SHAPE, measure, prototype_project, report  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "..", "..", "shared", "tools", "vigra_reference.py")


def stage_seconds(project: str, raw: str, block_shape: tuple[int, ...] | None) -> dict:
    """CPU seconds of features and forest over the export's blocks, computed one after the other in this thread
    (CPU time, so that other processes on the machine do not count)."""
    keep_freed_memory()  # as in the compute processes
    source = open_source(raw)
    pipeline = build_pipeline(open_project(project), source.channels, True)
    grid = BlockGrid(source.spatial_shape, block_shape or default_block_shape(source.spatial_shape),
                     (0,) + pipeline.halo)
    seconds = {"features": 0.0, "forest": 0.0}
    blocks = list(grid)
    most = pipeline.features.column_count * max(b.roi.size for b in blocks)
    planar_buffer = np.empty(most, np.float32)  # reused, as workers do
    for i, block in enumerate([blocks[len(blocks) // 2], *blocks]):  # the first one compiles, untimed
        data = source.read(block.halo_roi)[0]
        target = tuple(zip(block.roi.start[1:], block.roi.stop[1:]))
        started = time.thread_time()
        planar = pipeline.features.compute_planar(data, block.halo_roi.start[1:], source.spatial_shape[1:], target,
                                                  out=planar_buffer)
        featured = time.thread_time()
        pipeline.forests.predict_planar(planar.reshape(len(planar), -1))  # as Pipeline.run does
        if i:
            seconds["features"] += featured - started
            seconds["forest"] += time.thread_time() - featured
    trees = pipeline.forests.roots.size
    voxels = int(np.prod(source.spatial_shape))
    return {"features_s": round(seconds["features"], 2), "forest_s": round(seconds["forest"], 2),
            "features_us_per_voxel": round(seconds["features"] / voxels * 1e6, 3),
            "forest_us_per_voxel": round(seconds["forest"] / voxels * 1e6, 3),
            "forest_ns_per_tree_voxel": round(seconds["forest"] / voxels / trees * 1e9, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default=",".join(map(str, PROTOTYPE_SHAPE)), help="z,y,x of the volume")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--block_shape", default=None, help="z,y,x blocks for our export")
    ap.add_argument("--dir", default=os.path.join(HERE, "out"))
    ap.add_argument("--skip-reference", action="store_true")
    a = ap.parse_args()
    shape = tuple(int(v) for v in a.shape.split(","))
    work = os.path.join(a.dir, "compute_core_" + "x".join(map(str, shape)))
    project = prototype_project(work, shape)
    warm_up()  # numba compiles our kernels into its on-disk cache once, as any first run of the app does
    voxels = int(np.prod(shape))
    ours_out = os.path.join(work, "ours")
    cmd = [sys.executable, "-m", "ilastik_desktop", "--headless", "--project", project, "--output_format", "npy",
           "--output_filename_format", ours_out, "--workers", str(a.workers), "--no-progress"]
    if a.block_shape:
        cmd += ["--block_shape", a.block_shape]
    rows = [{"run": f"ilastik-desktop --workers {a.workers}", **measure(cmd)}]
    if not a.skip_reference and os.path.exists("/usr/bin/python3"):
        ref_out = os.path.join(work, "reference.npy")
        rows.append({"run": "vigra_reference --threads 2", **measure(
            ["/usr/bin/python3", REFERENCE, "--project", project, "--raw", os.path.join(work, "raw.h5/data"),
             "--threads", "2", "--out", ref_out])})
        d = np.abs(np.load(ours_out + ".npy").reshape(-1) - np.load(ref_out).reshape(-1))
        agreement = {"fraction_off_by_0.015": float((d >= 0.015).mean()), "max_abs_diff": float(d.max())}
    else:
        agreement = {}
    for r in rows:
        r["voxels_per_s"] = round(voxels / r["wall_s"])
        r.pop("stderr_tail", None)
    block_shape = tuple(int(v) for v in ("1," + a.block_shape).split(",")) if a.block_shape else None
    stages = stage_seconds(project, os.path.join(work, "raw.h5/data"), block_shape)
    compute_wall = (stages["features_s"] + stages["forest_s"]) / a.workers
    stages["other_s"] = round(rows[0]["wall_s"] - compute_wall, 2)  # wall time not spent computing, per worker
    extra = {"shape_zyx": shape, "voxels": voxels, "agreement": agreement, "stages_one_process": stages}
    if len(rows) == 2:
        extra["speedup_vs_reference"] = round(rows[1]["wall_s"] / rows[0]["wall_s"], 2)
    report("compute_core", rows, extra)


if __name__ == "__main__":
    main()
