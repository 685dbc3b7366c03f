"""Objects larger than memory: thresholding and labelling a given probability map block by block.

    python bench/objects.py [--dir bench/out/objects] [--shape 512,2048,2048] [--small 128,1024,1024]

Writes a synthetic probability map as zarr (float32, one channel; ~120,000 blob-shaped objects from a
product of sines, plus tubes that cross every block along z, y and x), then runs
``ilastik-desktop --headless --prediction_maps MAP --export_source Objects`` on it (the blockwise path)
and measures wall time and the peak resident memory of the whole process tree. On a smaller map that
fits in memory it also runs the whole-frame path (the map read at once, ``threshold_frame``) in its own
process, reports both side by side and checks that both wrote the same labels. Prints JSON and a table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import measure, report  # noqa: E402
from ilastik_desktop.runtime.demo import write_demo_project  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
THRESHOLD = "channel=0,low=0.75,min_size=10"  # smoothing: sigma 1.0 per axis, the project's default
PERIODS = (32.0, 48.0, 48.0)  # z, y, x periods of the blob pattern, in voxels
SLAB = 32  # z planes generated and written at a time


def write_map(path: str, shape: tuple[int, int, int]) -> str:
    """A (z, y, x, 1) float32 zarr probability map of blobs and tubes; kept if it already exists."""
    import zarr
    from numcodecs import Blosc

    if os.path.exists(os.path.join(path, ".zarray")) and zarr.open_array(path, mode="r").shape == shape + (1,):
        return path
    compressor = Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE)
    array = zarr.open_array(path, mode="w", shape=shape + (1,), chunks=(SLAB, 256, 256, 1), dtype="f4",
                            zarr_format=2, compressor=compressor)
    sy, sx = (np.sin(2 * np.pi * np.arange(n) / p).astype(np.float32) for n, p in zip(shape[1:], PERIODS[1:]))
    plane = sy[:, None] * sx[None, :]
    tubes = np.zeros(shape[1:], bool)
    tubes[shape[1] // 3 - 2: shape[1] // 3 + 2, :] = True  # along x, through every block of its row
    tubes[:, shape[2] // 3 - 2: shape[2] // 3 + 2] = True  # along y
    for z0 in range(0, shape[0], SLAB):
        z = np.arange(z0, min(z0 + SLAB, shape[0]))
        sz = np.sin(2 * np.pi * z / PERIODS[0]).astype(np.float32)
        slab = 0.5 + 0.5 * sz[:, None, None] * plane[None]
        slab[:, tubes] = 0.95  # tubes along z through the whole volume where the two tube planes cross
        slab = np.round(slab * 128) / 128  # few distinct values: the map compresses like a real one
        array[z0: z0 + len(z), :, :, 0] = slab
    return path


def blockwise(project: str, map_path: str, out: str) -> dict:
    """The app's path: headless, the map given with ``--prediction_maps``, labels written as zarr."""
    shutil.rmtree(out + ".zarr", ignore_errors=True)
    cmd = [sys.executable, "-m", "ilastik_desktop", "--headless", "--no-progress", "--project", project,
           "--prediction_maps", map_path, "--input_axes", "zyxc", "--export_source", "Objects",
           "--threshold", THRESHOLD, "--output_format", "zarr", "--output_filename_format", out]
    return measure(cmd)


WHOLE_FRAME = textwrap.dedent("""
    import sys, zarr, numpy as np
    from backend.compute.threshold import threshold_frame
    from ilastik_desktop.runtime.settings import parse_threshold
    source, out, spec = sys.argv[1:4]
    frame = zarr.open_array(source, mode="r")[...]
    labels = threshold_frame(frame, parse_threshold(spec, None, 1))
    target = zarr.open_array(out, mode="w", shape=labels.shape, chunks=(32, 256, 256), dtype=labels.dtype,
                             zarr_format=2)
    target[...] = labels
    print(int(labels.max()))
""")


def whole_frame(map_path: str, out: str) -> dict:
    """The frame at once: read the map, ``threshold_frame``, write the labels (a process of its own)."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(HERE)}
    return measure([sys.executable, "-c", WHOLE_FRAME, map_path, out, THRESHOLD], env=env)


def same_labels(blockwise_out: str, whole_out: str) -> bool:
    """Whether the two runs wrote identical labels (the small map's labels fit in memory twice)."""
    import zarr

    ours = zarr.open(blockwise_out, mode="r")
    if not isinstance(ours, zarr.Array):  # an OME-Zarr image: its first scale
        ours = ours[sorted(ours.array_keys())[0]]
    return bool(np.array_equal(np.squeeze(ours[...]), np.squeeze(zarr.open_array(whole_out, mode="r")[...])))


def _shape(text: str) -> tuple[int, int, int]:
    z, y, x = (int(v) for v in text.split(","))
    return z, y, x


def main() -> None:
    """Generate the maps, run both paths and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.path.join(HERE, "out", "objects"))
    parser.add_argument("--shape", type=_shape, default=(512, 2048, 2048), help="the large map (z,y,x)")
    parser.add_argument("--small", type=_shape, default=(128, 1024, 1024), help="the map that fits (z,y,x)")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    project = write_demo_project(os.path.join(args.dir, "project"), shape=(16, 64, 64), trees=4)
    rows = []
    small = write_map(os.path.join(args.dir, "small.zarr"), args.small)
    whole = whole_frame(small, os.path.join(args.dir, "small_whole.zarr"))
    block = blockwise(project, small, os.path.join(args.dir, "small_blockwise"))
    identical = same_labels(os.path.join(args.dir, "small_blockwise.zarr"), os.path.join(args.dir, "small_whole.zarr"))
    for path, result in (("whole frame", whole), ("blockwise", block)):
        rows.append({"map": "x".join(map(str, args.small)), "path": path, "wall_s": result["wall_s"],
                     "peak_rss_mb": result["peak_rss_mb"], "identical": identical})
    large = write_map(os.path.join(args.dir, "large.zarr"), args.shape)
    result = blockwise(project, large, os.path.join(args.dir, "large_blockwise"))
    voxels = int(np.prod(args.shape))
    rows.append({"map": "x".join(map(str, args.shape)), "path": "blockwise", "wall_s": result["wall_s"],
                 "peak_rss_mb": result["peak_rss_mb"], "identical": "",
                 "mvoxel_per_s": round(voxels / result["wall_s"] / 1e6, 1)})
    report("objects", rows, {"threshold": THRESHOLD, "float32_map_gb": round(voxels * 4 / 2**30, 1),
                             "summary_line": result["stderr_tail"]})


if __name__ == "__main__":
    main()
