"""What the export needs from the grid, the sources and the writers: blocks one at a time, read errors that name
their file and region, and an output refused up front when it cannot fit on the disk."""

from __future__ import annotations

import itertools
import os
import tracemalloc

import h5py
import numpy as np
import pytest

from backend.compute.geometry import BlockGrid, Roi
from backend.errors import UserError, is_deterministic
from backend.io.sources import open_source
from backend.io.sources.base import SourceReadError
from backend.io.writers import BlockWriter


def test_blocks_of_a_declared_huge_grid_come_one_at_a_time_in_either_order():
    grid = BlockGrid((1, 2**31, 64, 64), (1, 64, 128, 128), (0, 8, 8, 8))
    image = Roi.from_shape(grid.shape)
    tracemalloc.start()
    try:
        first, last = next(grid.blocks_in(image)), next(grid.blocks_in(image, reverse=True))
        whole = next(iter(grid))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes for the first block"
    assert first == whole and first.index == (0, 0, 0, 0) and last.index == (0, 2**25 - 1, 0, 0)
    assert grid.count_in(image) == 2**25

    small = BlockGrid((3, 50, 70, 90), (1, 16, 32, 40), (0, 2, 3, 4))
    roi = Roi((1, 5, 10, 20), (3, 40, 70, 81))
    forward = [b.index for b in small.blocks_in(roi)]
    assert forward == list(itertools.product(range(1, 3), range(0, 3), range(0, 3), range(0, 3)))
    assert [b.index for b in small.blocks_in(roi, reverse=True)] == forward[::-1]
    assert small.count_in(roi) == len(forward) == 54
    assert [b.index for b in small] == list(itertools.product(*(range(n) for n in small.grid_shape)))


def test_a_damaged_chunk_is_a_read_error_naming_the_file_and_region(tmp_path):
    path = str(tmp_path / "damaged.h5")
    image = np.random.default_rng(0).integers(0, 255, (16, 64, 64), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        chunk = f.create_dataset("data", data=image, chunks=(8, 64, 64), compression="gzip").id.get_chunk_info(1)
    with open(path, "r+b") as f:
        f.seek(chunk.byte_offset + chunk.size // 2)
        f.write(b"\xff" * 64)
    source = open_source(path + "/data")
    with pytest.raises(SourceReadError, match=rf"^{path}/data: cannot read the region z 4-12, y 0-64, x 0-64 "
                                              r"\(OSError: .*\)$") as caught:
        source.read(Roi((0, 4, 0, 0), (1, 12, 64, 64)))
    assert isinstance(caught.value, OSError) and not is_deterministic(caught.value)  # not cached: may pass
    assert np.array_equal(source.read(Roi((0, 0, 0, 0), (1, 8, 64, 64)))[0, ..., 0], image[:8])  # the rest reads


def test_an_output_larger_than_the_free_disk_space_is_refused_before_anything_is_written(tmp_path):
    huge = Roi.from_shape((1, 2**31, 64, 64))  # 70 TB of float32 pairs
    for fmt in ("hdf5", "npy", "tif"):
        with pytest.raises(UserError, match=r"the output needs 70,368.7 GB but only [\d,.]+ GB are free in "):
            BlockWriter(str(tmp_path / f"out.{fmt}"), fmt, "zyxc", huge, 2, np.float32, (1, 64, 128, 128))
    assert os.listdir(tmp_path) == []
    writer = BlockWriter(str(tmp_path / "out.zarr"), "zarr", "zyxc", huge, 2, np.float32, (1, 64, 128, 128))
    writer.abort()  # zarr compresses its chunks: its size is not known in advance
    assert os.listdir(tmp_path) == []


def test_a_partial_folder_still_being_written_is_removed_for_good(tmp_path):
    """An interrupted zarr write goes on briefly on zarr's I/O thread: removing the partial output then failed
    with "Directory not empty" (an OSError traceback after SIGHUP in CI), or the late chunk re-created it."""
    import threading
    import time

    from backend.io.writers import _remove

    partial = tmp_path / ".out.zarr.partial"
    (partial / "c").mkdir(parents=True)
    started = threading.Event()

    def late_writes() -> None:
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            try:  # as zarr's I/O thread does, racing the removal (which may take the folder away mid-way)
                (partial / "c").mkdir(parents=True, exist_ok=True)
                (partial / "c" / f"{time.monotonic_ns()}").write_bytes(b"chunk")
            except OSError:
                continue
            started.set()

    writer = threading.Thread(target=late_writes)
    writer.start()
    started.wait(5)
    _remove(str(partial))
    writer.join()
    assert not partial.exists()
