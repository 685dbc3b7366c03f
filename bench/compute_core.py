"""Compute-core benchmark: our headless export vs the vigra reference on the prototype's volume.

    python bench/compute_core.py [--shape Z,Y,X] [--workers 2] [--block_shape Z,Y,X] [--dir bench/out]

Builds the prototype's benchmark (384 x 384 x 192 uint8, 30 3D features at scales 1.0, 3.5, 10.0,
100 trees in 2 forests), times ``ilastik-desktop --headless`` and ``vigra_reference.py --threads 2``
on the same volume and project, checks they agree within ilastik's tolerance, prints JSON and a table.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import PROTOTYPE_SHAPE, measure, prototype_project, report  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "..", "..", "shared", "tools", "vigra_reference.py")


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
    extra = {"shape_zyx": shape, "voxels": voxels, "agreement": agreement}
    if len(rows) == 2:
        extra["speedup_vs_reference"] = round(rows[1]["wall_s"] / rows[0]["wall_s"], 2)
    report("compute_core", rows, extra)


if __name__ == "__main__":
    main()
