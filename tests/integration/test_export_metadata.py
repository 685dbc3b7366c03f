"""The voxel size of the raw data reaches every exported file through the real command line, and the web
service's OME-Zarr metadata says the same as a zarr export's."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from backend.io.ngff import read_multiscales
from backend.io.voxel_size import VoxelSize
from tests.conftest import run_cli
from tests.integration.test_executor import small_project
from tests.integration.webserver import ServeProcess

pytestmark = pytest.mark.timeout(600)

SIZE = VoxelSize("µm", (("z", 2.0), ("y", 0.5), ("x", 0.5)))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A small trained project whose raw HDF5 says its voxels are 2 x 0.5 x 0.5 µm, and the same image as an
    ImageJ TIFF (4 pixels per micron, 1.5 µm between slices)."""
    folder = tmp_path_factory.mktemp("sized")
    path, image = small_project(folder, shape=(16, 64, 96))
    with h5py.File(folder / "raw.h5", "a") as f:
        f["data"].attrs["element_size_um"] = (2.0, 0.5, 0.5)
    tiff = str(folder / "stack.tif")
    tifffile.imwrite(tiff, image, imagej=True, resolution=(4.0, 4.0),
                     metadata={"spacing": 1.5, "unit": "micron", "axes": "ZYX"})
    return path, tiff


def _export(tmp_path, fmt: str, *args: str) -> str:
    result = run_cli("--headless", "--no-progress", "--workers", "1", "--output_format", fmt,
                     "--output_filename_format", str(tmp_path / f"out_{fmt}"), *args)
    assert result.returncode == 0, result.stderr
    return str(tmp_path / f"out_{fmt}.{ {'hdf5': 'h5'}.get(fmt, fmt)}")


def test_headless_exports_carry_the_raw_datas_voxel_size(project, tmp_path):
    path, _ = project
    with h5py.File(_export(tmp_path, "hdf5", "--project", path), "r") as f:
        data = f["exported_data"]
        assert list(data.attrs["element_size_um"]) == [2.0, 0.5, 0.5]
        assert [t["resolution"] for t in json.loads(data.attrs["axistags"])["axes"]] == [2.0, 0.5, 0.5, 0]
        assert data.compression == "gzip" and all(c <= s for c, s in zip(data.chunks, data.shape))
    with tifffile.TiffFile(_export(tmp_path, "tif", "--project", path)) as tif:
        x = tif.pages[0].tags["XResolution"].value
        assert tif.pages[0].tags["ResolutionUnit"].value == 3 and x[0] / x[1] == pytest.approx(20000)  # per cm
        assert tif.shaped_metadata[0]["spacing"] == 2.0
    meta = read_multiscales(dict(zarr.open_group(_export(tmp_path, "zarr", "--project", path), mode="r").attrs))
    assert meta == ("0", "czyx", SIZE)


def test_an_imagej_tiff_raw_datas_spacing_reaches_the_zarr_export(project, tmp_path):
    path, tiff = project
    out = _export(tmp_path, "zarr", "--project", path, "--raw_data", tiff)
    group = zarr.open_group(out, mode="r")
    scale = group.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == [1.0, 1.5, 0.25, 0.25]
    assert [a.get("unit") for a in group.attrs["multiscales"][0]["axes"]] == [None] + ["micrometer"] * 3
    assert group["0"].shape[0] == 2 and np.isfinite(group["0"][:]).all()


def test_the_web_services_ome_metadata_is_the_zarr_exports(project, tmp_path):
    path, _ = project
    exported = zarr.open_group(_export(tmp_path, "zarr", "--project", path), mode="r").attrs["multiscales"][0]
    with ServeProcess(path, "--workers", "1") as server:
        status, body, _ = server.get("/zarr/0/probabilities/.zattrs")
    served = json.loads(body)["multiscales"][0]
    assert status == 200 and read_multiscales({"multiscales": [served]}) == ("0", "czyx", SIZE)
    assert served["axes"] == exported["axes"] and served["datasets"] == exported["datasets"]
