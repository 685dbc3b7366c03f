"""What the export needs from the sources: read errors that name their file and region."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from backend.compute.geometry import Roi
from backend.errors import is_deterministic
from backend.io.sources import open_source
from backend.io.sources.base import SourceReadError


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
