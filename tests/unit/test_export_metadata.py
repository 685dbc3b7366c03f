"""Exports carry the voxel size read from their input, in each format's own metadata, read back by the format's
own library (tifffile, h5py, zarr); HDF5 output is compressed in chunks that fit the data."""

import json

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from backend.compute.geometry import Roi
from backend.io.ngff import multiscales, read_multiscales
from backend.io.sources import open_source
from backend.io.voxel_size import VoxelSize, unit_symbol
from backend.io.writers import CHUNK_BYTES, BlockWriter, chunk_shape

SHAPE = (1, 20, 40, 50)  # tzyx
BLOCK = (1, 16, 32, 32)


def _export(path: str, fmt: str, voxel_size, channels: int = 3) -> np.ndarray:
    """Write random (t, z, y, x, c) values block by block; returns them."""
    values = np.random.default_rng(1).random(SHAPE + (channels,)).astype(np.float32)
    writer = BlockWriter(path, fmt, "zyxc", Roi.from_shape(SHAPE), channels, np.float32, BLOCK,
                         voxel_size=voxel_size)
    for z in range(0, SHAPE[1], BLOCK[1]):
        for y in range(0, SHAPE[2], BLOCK[2]):
            for x in range(0, SHAPE[3], BLOCK[3]):
                roi = Roi((0, z, y, x), (1, min(z + BLOCK[1], SHAPE[1]), min(y + BLOCK[2], SHAPE[2]),
                                         min(x + BLOCK[3], SHAPE[3])))
                writer.write(roi, values[(slice(None),) + roi.slices()[1:]])
    writer.commit()
    return values[0]


@pytest.fixture
def sized_tiff(tmp_path):
    """A z stack written by tifffile as ImageJ does: 4 pixels per micron in x and y, slices 0.5 micron apart."""
    path = str(tmp_path / "stack.tif")
    tifffile.imwrite(path, np.zeros(SHAPE[1:], np.uint8), imagej=True, resolution=(4.0, 4.0),
                     metadata={"spacing": 0.5, "unit": "micron", "axes": "ZYX"})
    return path


def test_the_inputs_voxel_size_from_imagej_tiff_hdf5_and_ome_zarr(sized_tiff, tmp_path):
    assert open_source(sized_tiff).voxel_size == VoxelSize("µm", (("z", 0.5), ("y", 0.25), ("x", 0.25)))
    assert open_source(sized_tiff).pixel_size == (0.25, "µm")  # what the scale bar shows
    with h5py.File(tmp_path / "fiji.h5", "w") as f:
        f.create_dataset("data", data=np.zeros((4, 8, 8, 2), np.uint8)).attrs["element_size_um"] = (2.0, 0.5, 0.5)
    assert open_source(str(tmp_path / "fiji.h5/data"), "zyxc").voxel_size.in_unit("µm") == {"z": 2, "y": .5, "x": .5}
    group = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w", zarr_format=2)
    group.create_array("s0", shape=(2, 4, 8, 8), dtype=np.uint8)
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "c", "type": "channel"}, {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "nanometer"}, {"name": "x", "type": "space", "unit": "nanometer"}],
        "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1.5, 80, 80]}]}]}]
    size = open_source(str(tmp_path / "ome.zarr")).voxel_size
    assert size.unit == "nm" and size.in_unit("nm") == pytest.approx({"z": 1500, "y": 80, "x": 80})


def test_each_format_records_the_voxel_size_as_its_readers_expect(sized_tiff, tmp_path):
    size = open_source(sized_tiff).voxel_size
    _export(str(tmp_path / "out.tif"), "tif", size)
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        tags = tif.pages[0].tags
        assert tags["ResolutionUnit"].value == 3  # centimetre
        assert tags["XResolution"].value[0] / tags["XResolution"].value[1] == pytest.approx(40000)
        assert tags["YResolution"].value[0] / tags["YResolution"].value[1] == pytest.approx(40000)
        assert tif.shaped_metadata[0]["spacing"] == 0.5 and tif.shaped_metadata[0]["unit"] == "µm"
    _export(str(tmp_path / "out.h5"), "hdf5", size)
    with h5py.File(tmp_path / "out.h5", "r") as f:
        attrs = f["exported_data"].attrs
        assert list(attrs["element_size_um"]) == [0.5, 0.25, 0.25]
        tags = json.loads(attrs["axistags"])["axes"]
        assert [(t["key"], t["resolution"]) for t in tags] == [("z", 0.5), ("y", 0.25), ("x", 0.25), ("c", 0)]
        assert json.loads(attrs["axis_units"]) == {"z": "µm", "y": "µm", "x": "µm", "c": ""}
    _export(str(tmp_path / "out.zarr"), "zarr", size)
    image = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    axes = image.attrs["multiscales"][0]["axes"]
    assert [(a["name"], a.get("unit")) for a in axes] == [("c", None), ("z", "micrometer"), ("y", "micrometer"),
                                                           ("x", "micrometer")]
    scale = image.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == [1.0, 0.5, 0.25, 0.25] and image["0"].shape == (3,) + SHAPE[1:]
    for name in ("out.tif", "out.h5", "out.zarr"):  # and our reader finds the same size again
        assert open_source(str(tmp_path / name)).voxel_size == size, name


def test_the_values_survive_in_every_format(tmp_path):
    for fmt, name in (("hdf5", "v.h5"), ("tif", "v.tif"), ("zarr", "v.zarr"), ("npy", "v.npy")):
        values = _export(str(tmp_path / name), fmt, None)
        source = open_source(str(tmp_path / name))
        assert np.array_equal(source.read(Roi.from_shape(source.spatial_shape))[0], values), fmt
    assert np.array_equal(zarr.open_array(str(tmp_path / "v.zarr/0"), mode="r")[:], np.moveaxis(values, -1, 0))
    with tifffile.TiffFile(tmp_path / "v.tif") as tif:  # 3 channels are grey samples, not an RGB image
        assert values.shape[-1] == 3 and tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK


def test_without_a_voxel_size_none_is_written(tmp_path):
    _export(str(tmp_path / "n.tif"), "tif", None)
    with tifffile.TiffFile(tmp_path / "n.tif") as tif:
        assert tif.pages[0].tags["ResolutionUnit"].value == 1 and "unit" not in tif.shaped_metadata[0]
    _export(str(tmp_path / "n.h5"), "hdf5", None)
    with h5py.File(tmp_path / "n.h5", "r") as f:
        attrs = f["exported_data"].attrs
        assert "element_size_um" not in attrs and "axis_units" not in attrs
        assert {t["resolution"] for t in json.loads(attrs["axistags"])["axes"]} == {0}
    _export(str(tmp_path / "n.zarr"), "zarr", None)
    meta = zarr.open_group(str(tmp_path / "n.zarr"), mode="r").attrs["multiscales"][0]
    assert meta["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0] * 4
    assert not any("unit" in axis for axis in meta["axes"])
    for name in ("n.tif", "n.h5", "n.zarr"):
        assert open_source(str(tmp_path / name)).voxel_size is None, name


def test_hdf5_output_is_compressed_in_chunks_that_fit_the_data(tmp_path):
    _export(str(tmp_path / "c.h5"), "hdf5", None)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        data = f["exported_data"]
        assert data.compression == "gzip" and data.shuffle
        assert all(c <= s for c, s in zip(data.chunks, data.shape))
    demo = (48, 160, 160, 17)  # the demo's Features: 128-wide blocks would leave edge chunks 60 % padding
    chunks = chunk_shape(demo, (48, 128, 128, 1), 4)
    assert all(-s % c <= s // 8 for s, c in zip(demo, chunks)) and np.prod(chunks) * 4 <= CHUNK_BYTES
    assert all(b % c == 0 for b, c in zip((48, 128, 128, 1), chunks))  # a block covers whole chunks
    assert chunk_shape((2, 3, 1000, 5), (1, 64, 128, 1), 4) == (1, 3, 128, 1)  # never beyond the data
    assert chunk_shape((2 ** 31, 64, 64, 2), (64, 128, 128, 1), 4) == (64, 64, 64, 1)  # about 1 MB


def test_units_and_ngff_metadata_round_trip():
    assert [unit_symbol(u) for u in ("micron", "um", "µm", "micrometre", "nanometers", "pixel", None)] == [
        "µm", "µm", "µm", "µm", "nm", None, None]
    size = VoxelSize.checked({"z": 2.0, "y": 0.5, "x": 0.5}, "micrometer")
    assert read_multiscales({"multiscales": multiscales("img", "tczyx", size)}) == ("0", "tczyx", size)
    assert read_multiscales({"multiscales": multiscales("img", "cyx", None)}) == ("0", "cyx", None)
    assert VoxelSize.checked({"x": 0.0}, "µm") is None and VoxelSize.checked({"x": 1.0}, "pixel") is None


def test_imagejs_unit_wins_over_the_resolution_unit_tag(tmp_path):
    path = str(tmp_path / "inch.tif")  # ImageJ reads 2 pixels per its unit, whatever ResolutionUnit says
    tifffile.imwrite(path, np.zeros((4, 8, 8), np.uint8), imagej=True, resolution=(2.0, 2.0),
                     resolutionunit="INCH", metadata={"unit": "um", "spacing": 3.0, "axes": "ZYX"})
    assert open_source(path).voxel_size == VoxelSize("µm", (("z", 3.0), ("y", 0.5), ("x", 0.5)))


@pytest.mark.parametrize("dpi", [72, 96])
@pytest.mark.parametrize("description", [None, {}])
def test_an_image_editors_screen_resolution_is_no_pixel_size(tmp_path, dpi, description):
    path = str(tmp_path / "photo.tif")
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), resolution=(dpi, dpi), resolutionunit="INCH",
                     metadata=description)
    assert open_source(path).voxel_size is None
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), resolution=(300, 300), resolutionunit="INCH")
    assert open_source(path).voxel_size.in_unit("µm") == pytest.approx({"y": 25400 / 300, "x": 25400 / 300})


def test_hdf5_element_size_um_only_when_every_spatial_size_is_known(tmp_path):
    _export(str(tmp_path / "yx.h5"), "hdf5", VoxelSize("nm", (("y", 250.0), ("x", 250.0))))  # z unknown
    with h5py.File(tmp_path / "yx.h5", "r") as f:
        attrs = f["exported_data"].attrs
        assert "element_size_um" not in attrs and json.loads(attrs["axis_units"])["z"] == ""
    _export(str(tmp_path / "zyx.h5"), "hdf5", VoxelSize("nm", (("z", 1000.0), ("y", 250.0), ("x", 250.0))))
    with h5py.File(tmp_path / "zyx.h5", "r") as f:
        assert list(f["exported_data"].attrs["element_size_um"]) == pytest.approx([1.0, 0.25, 0.25])
