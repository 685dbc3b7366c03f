import os
import time

import h5py
import numpy as np
import pytest
import tifffile

from backend.compute.geometry import Roi
from backend.errors import DataError
from backend.io.sources import open_source, split_internal_path
from backend.io.writers import axistags_json


@pytest.fixture
def volume():
    return np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)


def _check(source, volume, axes="zyx"):
    assert source.axes == axes
    assert source.shape == (1, 4, 5, 6, 1)
    roi = Roi((0, 1, 2, 3), (1, 3, 5, 6))
    assert np.array_equal(source.read(roi)[0, ..., 0], volume[1:3, 2:5, 3:6])


def test_split_internal_path():
    assert split_internal_path("/a/b.h5/data/x") == ("/a/b.h5", "data/x")
    assert split_internal_path("/a/b.tif") == ("/a/b.tif", None)
    assert split_internal_path("x.zarr/0") == ("x.zarr", "0")


def test_hdf5_with_axistags(tmp_path, volume):
    path = str(tmp_path / "v.h5")
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("g/data", data=volume.transpose(2, 1, 0), chunks=(2, 2, 2))
        ds.attrs["axistags"] = axistags_json("xyz")
    source = open_source(path + "/g/data")
    assert source.axes == "xyz" and source.shape == (1, 4, 5, 6, 1)
    assert np.array_equal(source.read(Roi((0, 0, 0, 0), (1, 4, 5, 6)))[0, ..., 0], volume)
    assert open_source(path).description.endswith("g/data")  # the only dataset is found


def test_hdf5_errors(tmp_path):
    path = str(tmp_path / "two.h5")
    with h5py.File(path, "w") as f:
        f["a"] = np.zeros(3)
        f["b"] = np.zeros(3)
    with pytest.raises(DataError, match="holds 2 datasets"):
        open_source(path)
    with pytest.raises(DataError, match="no dataset 'c'"):
        open_source(path + "/c")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5"):
        open_source(str(tmp_path / "bad.h5"))
    with pytest.raises(DataError, match="no such file"):
        open_source(str(tmp_path / "missing.h5"))


def test_npy_is_memory_mapped(tmp_path, volume):
    path = str(tmp_path / "v.npy")
    np.save(path, volume)
    source = open_source(path)
    assert isinstance(source.array, np.memmap)
    _check(source, volume)
    np.save(path, volume[None, ..., None])
    assert open_source(path).axes == "tzyxc"


def test_input_axes_override(tmp_path, volume):
    path = str(tmp_path / "v.npy")
    np.save(path, volume)
    source = open_source(path, axes="tyx")
    assert source.shape == (4, 1, 5, 6, 1)
    with pytest.raises(DataError, match="do not fit"):
        open_source(path, axes="yx")


def test_multipage_tiff(tmp_path, volume):
    path = str(tmp_path / "v.tif")
    tifffile.imwrite(path, volume, photometric="minisblack")
    _check(open_source(path), volume)


def test_png_and_stack(tmp_path, volume):
    import imageio.v3 as iio

    paths = []
    for z in range(4):
        paths.append(str(tmp_path / f"s{z}.png"))
        iio.imwrite(paths[-1], volume[z].astype(np.uint8))
    single = open_source(paths[0])
    assert single.axes == "yx" and single.shape == (1, 1, 5, 6, 1)
    stack = open_source(str(tmp_path / "s*.png"))
    assert stack.shape == (1, 4, 5, 6, 1)
    assert np.array_equal(stack.read(Roi((0, 1, 0, 0), (1, 3, 5, 6)))[0, ..., 0], volume[1:3].astype(np.uint8))
    assert open_source(os.pathsep.join(paths[:2])).shape == (1, 2, 5, 6, 1)


def test_zarr_and_ome_zarr(tmp_path, volume):
    import zarr

    plain = str(tmp_path / "v.zarr")
    zarr.open_array(plain, mode="w", shape=volume.shape, chunks=(2, 2, 2), dtype=volume.dtype)[:] = volume
    _check(open_source(plain), volume)
    ome = str(tmp_path / "ome.zarr")
    group = zarr.open_group(ome, mode="w")
    group.create_array("0", shape=(1,) + volume.shape, chunks=(1, 2, 2, 2), dtype=volume.dtype)[:] = volume[None]
    group.attrs["multiscales"] = [{"axes": [{"name": "c"}, {"name": "z"}, {"name": "y"}, {"name": "x"}],
                                   "datasets": [{"path": "0"}]}]
    source = open_source(ome)
    assert source.axes == "czyx" and source.shape == (1, 4, 5, 6, 1)


def test_unknown_format(tmp_path):
    (tmp_path / "x.doc").write_text("hello")
    with pytest.raises(DataError, match="unknown image format"):
        open_source(str(tmp_path / "x.doc"))


def test_fingerprint_changes_with_content(tmp_path, volume):
    path = str(tmp_path / "v.npy")
    np.save(path, volume)
    before = open_source(path).fingerprint()
    np.save(path, volume + 1)
    os.utime(path, ns=(1, 1))
    assert open_source(path).fingerprint() != before


def _write_n5(folder, volume, block, compression):
    import gzip
    import json
    import struct

    os.makedirs(folder)
    with open(os.path.join(folder, "attributes.json"), "w") as f:
        json.dump({"dimensions": list(reversed(volume.shape)), "blockSize": list(reversed(block)),
                   "dataType": volume.dtype.name, "compression": {"type": compression}, "axes": ["x", "y", "z"]}, f)
    for index in np.ndindex(*[-(-n // b) for n, b in zip(volume.shape, block)]):
        if index == (1, 0, 0):
            continue  # a missing block reads as zeros
        part = volume[tuple(slice(i * b, (i + 1) * b) for i, b in zip(index, block))]
        payload = part.astype(part.dtype.newbyteorder(">")).tobytes()
        payload = gzip.compress(payload) if compression == "gzip" else payload
        header = struct.pack(">HH", 0, 3) + struct.pack(">3I", *reversed(part.shape))
        path = os.path.join(folder, *(str(i) for i in reversed(index)))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(header + payload)


@pytest.mark.parametrize("compression", ["raw", "gzip"])
def test_n5(tmp_path, volume, compression):
    _write_n5(str(tmp_path / "c.n5" / "vol"), volume, (3, 2, 4), compression)
    source = open_source(str(tmp_path / "c.n5/vol"))
    expected = volume.copy()
    expected[3:4, 0:2, 0:4] = 0
    assert source.axes == "zyx"
    assert np.array_equal(source.read(Roi((0, 0, 0, 0), (1, 4, 5, 6)))[0, ..., 0], expected)
    assert np.array_equal(source.read(Roi((0, 1, 1, 2), (1, 4, 4, 5)))[0, ..., 0], expected[1:4, 1:4, 2:5])


def test_zarr_fingerprint_changes_when_a_chunk_is_rewritten_in_place(tmp_path, volume):
    import zarr

    path = str(tmp_path / "v.zarr")
    array = zarr.open_array(path, mode="w", shape=volume.shape, chunks=(2, 5, 6), dtype=volume.dtype)
    array[:] = volume
    root_mtime = os.stat(path).st_mtime_ns
    before = open_source(path).fingerprint()
    array[0:2] = volume[0:2] + 1  # one chunk rewritten; the store's root folder is untouched
    assert os.stat(path).st_mtime_ns == root_mtime
    assert open_source(path).fingerprint() != before


def test_n5_fingerprint_changes_when_a_block_is_rewritten_in_place(tmp_path, volume):
    folder = tmp_path / "c.n5" / "vol"
    _write_n5(str(folder), volume, (3, 2, 4), "raw")
    before = open_source(str(folder)).fingerprint()
    block = folder / "0" / "0" / "0"
    block.write_bytes(block.read_bytes()[:-2] + b"\x00\x07")
    later = time.time_ns() + 10**9  # a coarse file-system clock could otherwise keep the old time
    os.utime(block, ns=(later, later))
    assert open_source(str(folder)).fingerprint() != before


def test_compressed_tiff_is_read_by_region_not_whole(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (6, 256, 256), dtype=np.uint8)
    path = str(tmp_path / "c.tif")
    tifffile.imwrite(path, image, compression="zlib", tile=(64, 64))
    source = open_source(path)
    assert not isinstance(source.array, np.ndarray)  # a lazy view: only the tiles a region touches are read
    roi = Roi((0, 2, 60, 130), (1, 4, 100, 200))
    assert np.array_equal(source.read(roi)[0, ..., 0], image[2:4, 60:100, 130:200])


def test_pixel_sizes_from_hdf5_element_size_and_tiff_resolution(tmp_path):
    volume = np.zeros((4, 16, 16), np.uint8)
    with h5py.File(tmp_path / "sized.h5", "w") as f:
        f.create_dataset("data", data=volume).attrs["element_size_um"] = (1.0, 0.5, 0.25)
        f.create_dataset("plain", data=volume)
    assert open_source(str(tmp_path / "sized.h5/data")).pixel_size == (0.25, "µm")
    assert open_source(str(tmp_path / "sized.h5/plain")).pixel_size is None
    tifffile.imwrite(tmp_path / "cm.tif", volume[0], resolution=(20000.0, 20000.0), resolutionunit="CENTIMETER")
    size, unit = open_source(str(tmp_path / "cm.tif")).pixel_size
    assert unit == "µm" and abs(size - 0.5) < 1e-9  # 20000 pixels per cm
    tifffile.imwrite(tmp_path / "none.tif", volume[0])
    assert open_source(str(tmp_path / "none.tif")).pixel_size is None
