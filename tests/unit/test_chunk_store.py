"""The chunk store of --shared-filesystem exports: chunks written by a task read back by zarr, slabs, messages."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import zarr

from backend.compute.geometry import BlockGrid, Roi
from backend.compute.pipeline import WRITTEN, BlockTask
from backend.distributed.protocol import ProtocolError, decode, task_from_message, task_message
from backend.errors import UserError
from backend.io.chunk_store import PARTIAL, create_or_join, stored
from backend.service.shared_export import parse_slab, slab_region

IDENTITY = {"data": "d", "pipeline": "p", "source": "Probabilities", "block_shape": [1, 4, 8, 8]}


@pytest.mark.parametrize("axes", ["tczyx", "cyx"])
def test_blocks_written_by_tasks_read_back_as_the_array_with_edges_cut_at_the_region(tmp_path, axes):
    depth = 6 if "z" in axes else 1
    region = Roi((0, 0, 0, 0), (1, depth, 13, 21))  # edge blocks only partly inside
    block = (1, 4 if depth > 1 else 1, 8, 8)
    output = create_or_join(str(tmp_path / "out.zarr"), axes, region, 2, np.dtype(np.float32), block, None,
                            dict(IDENTITY, block_shape=list(block)))
    rng = np.random.default_rng(1)
    whole = rng.random((depth + 4, 16, 24, 2), dtype=np.float32)  # (z, y, x, c), beyond the region
    for b in BlockGrid(region.shape, block, (0, 0, 0, 0)):
        values = whole[b.roi.start[1]:b.roi.start[1] + block[1], b.roi.start[2]:b.roi.start[2] + 8,
                       b.roi.start[3]:b.roi.start[3] + 8]  # whole blocks, as a worker computes them
        task = BlockTask("k", "Probabilities", WRITTEN, (0, 0, 0), (1, 1, 1), (), "p",
                         output=output.target(b.roi))
        assert stored(task, values) is WRITTEN
    array = zarr.open_group(output.path, mode="r")["0"][...]
    expected = np.moveaxis(whole[:depth, :13, :21], -1, 0)  # (c, z, y, x)
    assert np.array_equal(array, expected[None] if "z" in axes else expected[:, 0])
    assert not [n for n in os.listdir(output.array_path) if n.endswith(PARTIAL)]


def test_an_output_is_joined_with_the_same_settings_and_refused_with_others(tmp_path):
    path, region = str(tmp_path / "o.zarr"), Roi((0, 0, 0, 0), (1, 8, 8, 8))
    first = create_or_join(path, "czyx", region, 2, np.dtype(np.float32), (1, 4, 8, 8), None, IDENTITY)
    again = create_or_join(path, "czyx", region, 2, np.dtype(np.float32), (1, 4, 8, 8), None, IDENTITY)
    assert again.run == first.run  # the cache's records of one output go on
    with pytest.raises(UserError, match=r"\(pipeline differs: "):
        create_or_join(path, "czyx", region, 2, np.dtype(np.float32), (1, 4, 8, 8), None, dict(IDENTITY, pipeline="q"))
    assert sorted(os.listdir(tmp_path)) == ["o.zarr"]  # no temporary folder left
    (tmp_path / "file.h5").write_bytes(b"")
    with pytest.raises(UserError, match="file.h5 is a file, not a folder$"):
        create_or_join(str(tmp_path / "file.h5" / "o.zarr"), "czyx", region, 2, np.dtype(np.float32), (1, 4, 8, 8),
                       None, IDENTITY)


def test_slabs_are_whole_blocks_along_the_slowest_axis_that_has_enough():
    grid = BlockGrid((3, 40, 64, 64), (1, 16, 32, 32), (0, 0, 0, 0))  # z: 3 blocks, y and x: 2, t: 3
    region = Roi.from_shape(grid.shape)
    assert [slab_region(region, grid, (k, 3)) for k in (1, 2, 3)] == [
        Roi((0, 0, 0, 0), (3, 16, 64, 64)), Roi((0, 16, 0, 0), (3, 32, 64, 64)), Roi((0, 32, 0, 0), (3, 40, 64, 64))]
    assert slab_region(region, grid, (2, 2)) == Roi((0, 16, 0, 0), (3, 40, 64, 64))  # 1 and 2 of 3 blocks
    flat = BlockGrid((4, 1, 32, 32), (1, 1, 32, 32), (0, 0, 0, 0))
    assert slab_region(Roi.from_shape(flat.shape), flat, (2, 4)) == Roi((1, 0, 0, 0), (2, 1, 32, 32))  # along t
    with pytest.raises(UserError, match="no axis"):
        slab_region(region, grid, (1, 4))
    assert parse_slab("2/4") == (2, 4)
    for bad in ("0/2", "3/2", "2", "a/b", "1/0"):
        with pytest.raises(UserError, match="K/N"):
            parse_slab(bad)


def test_a_task_that_names_its_raw_data_and_output_travels_without_voxels(tmp_path):
    target = {"array": str(tmp_path / "o.zarr" / "0"), "axes": "czyx", "region": [[0, 0, 0, 0], [1, 8, 8, 8]],
              "block": [[0, 0, 0, 0], [1, 4, 8, 8]], "chunks": [1, 4, 8, 8], "dtype": "<f4", "compressor": None}
    reference = {"spec": "/data/raw.h5/data", "axes": "zyx", "start": [0, 2, 0, 0], "stop": [1, 8, 8, 8]}
    task = BlockTask("k", "Probabilities", WRITTEN, (2, 0, 0), (8, 8, 8), ((4, 8), (0, 8), (0, 8)), "p",
                     reference, output=target)
    frames = task_message(task)
    assert len(frames) == 1  # the header alone
    received = task_from_message(decode(frames))
    assert received.raw_ref == reference and received.output == target and received.raw.shape == (6, 8, 8, 0)
    for broken in ({**target, "array": "relative/0"}, {**target, "chunks": [1, 4]}, "x"):
        with pytest.raises(ProtocolError):
            task_from_message(decode(task_message(dataclasses.replace(task, output=broken))))
