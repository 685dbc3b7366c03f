"""The HDF5 writer process of ``--shared-filesystem`` hdf5 exports, driven through its socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import psutil
import pytest

from backend.compute.geometry import Roi
from backend.io.h5_writer import H5Output, send_block
from backend.io.writers import _partial_name
from tests.conftest import REPO
from tests.helpers import wait_for

REGION = Roi((0, 0, 0, 0), (1, 8, 16, 16))
SPEC = {"axes": "zyxc", "region": [[0, 0, 0, 0], [1, 8, 16, 16]], "channels": 2, "dtype": "<f4",
        "block_shape": [1, 8, 8, 8], "internal_path": "exported_data", "voxel_size": None}


def _output(path: str, poll_s: float = 0.1) -> H5Output:
    return H5Output(path, SPEC, "127.0.0.1", timeout_s=10, poll_s=poll_s)


def test_blocks_sent_with_the_token_are_in_the_file_once_committed_and_others_are_refused(tmp_path):
    path = str(tmp_path / "out.h5")
    output = _output(path)
    try:
        values = np.arange(8 * 8 * 8 * 2, dtype=np.float32).reshape(8, 8, 8, 2)
        for y, x in ((0, 0), (0, 8), (8, 0), (8, 8)):
            send_block(output.target(Roi((0, 0, y, x), (1, 8, y + 8, x + 8))), values + y * 100 + x)
        assert not os.path.exists(path) and os.path.exists(_partial_name(path))  # not named before the commit
        stranger = {**output.target(Roi((0, 0, 0, 0), (1, 8, 8, 8))), "token": "not-the-token", "timeout_s": 0.5}
        with pytest.raises(OSError, match="did not confirm a block within 0.5 s"):
            send_block(stranger, values * 0)  # ignored: it changes nothing
        malformed = output.target(Roi((0, 0, 0, 0), (1, 8, 8, 8)))
        with pytest.raises(OSError, match="refused a block"):
            send_block(malformed, np.zeros((8, 8, 8, 3), np.float32))  # three channels where the file has two
        outside = {**malformed, "block": [[0, 0, -8, 0], [1, 8, 0, 8]]}
        with pytest.raises(OSError, match="is not a block of the output"):
            send_block(outside, values * 0)  # before the region: never written anywhere
        oversized = {**malformed, "block": [[0, 0, 0, 0], [1, 8, 16, 16]], "timeout_s": 1}
        with pytest.raises(OSError):
            send_block(oversized, np.zeros((8, 16, 16, 2), np.float32))  # four blocks in one message: cut off
        send_block(output.target(Roi((0, 0, 0, 0), (1, 8, 8, 8))), values)  # the writer still serves
        output.commit()
    finally:
        output.abort()  # nothing left to do after a commit
    with h5py.File(path, "r") as f:
        data = f["exported_data"][...]
    assert data.shape == (8, 16, 16, 2) and data.dtype == np.float32
    assert np.array_equal(data[:, 8:, :8], values + 800) and np.array_equal(data[:, :8, :8], values)
    assert not os.path.exists(_partial_name(path))


def test_a_writer_whose_gateway_is_killed_ends_and_removes_its_file(tmp_path):
    path = str(tmp_path / "orphan.h5")
    gateway = subprocess.Popen([sys.executable, "-c", ORPHANING, path, json.dumps(SPEC)], stdout=subprocess.PIPE,
                               text=True, env=dict(os.environ, PYTHONPATH=REPO))
    try:
        writer = psutil.Process(int(gateway.stdout.readline()))
        assert os.path.exists(_partial_name(path))
    finally:
        gateway.kill()
        gateway.wait()
    wait_for(lambda: not writer.is_running() or writer.status() == psutil.STATUS_ZOMBIE, 5,
             message="the writer outlived its gateway")
    assert os.listdir(tmp_path) == []


ORPHANING = """
import json, sys, time
from backend.io.h5_writer import H5Output
output = H5Output(sys.argv[1], json.loads(sys.argv[2]), "127.0.0.1", 10, 0.1)
print(output.process.pid, flush=True)
time.sleep(60)
"""
