"""Headless --export_source "Object Features": ilastik's table of the exported Objects, as CSV and HDF5."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
from scipy import ndimage

from backend.compute.geometry import Roi
from backend.io.dataset import open_lane
from backend.io.project import open_project
from tests.conftest import run_cli

TIMESERIES = "/work/shared/data/ilastik-timeseries/mitocheckPixelClassification.ilp"
THRESHOLD = ("--threshold", "channel=1,min_size=5")


def _export(tmp_path, name: str, *args: str) -> str:
    result = run_cli("--headless", "--no-progress", "--project", TIMESERIES, "--workers", "1", *THRESHOLD,
                     "--output_filename_format", str(tmp_path / name), *args, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("table")
    _export(folder, "objects", "--export_source", "Objects", "--output_format", "npy")
    err = _export(folder, "features", "--export_source", "Object Features", "--output_format", "csv")
    _export(folder, "features", "--export_source", "Object Features", "--output_format", "hdf5")
    with open(folder / "features.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with h5py.File(folder / "features.h5", "r") as f:
        table = f["table"][()]
    raw = open_lane(open_project(TIMESERIES), 0, None, None)
    axes = raw.axes.replace("c", "")  # the export's axes (channel last, dropped here)
    objects = np.load(folder / "objects.npy")[..., 0].transpose([axes.index(a) for a in "tzyx"])
    return objects, rows, table, err


@pytest.mark.timeout(600)
def test_table_rows_are_the_exported_objects_features_frame_by_frame(exported):
    objects, rows, _, err = exported
    raw = open_lane(open_project(TIMESERIES), 0, None, None)
    image = raw.read(Roi.from_shape(raw.spatial_shape))[..., 0].astype(np.float64)
    assert "(9 frames," in err and objects.shape[0] == 9
    expected = []
    for t in range(objects.shape[0]):
        labels = objects[t, 0]
        for oid in np.unique(labels[labels > 0]):
            ys, xs = np.nonzero(labels == oid)
            values = image[t, 0][labels == oid]
            expected.append({"timestep": t, "labelimage_oid": oid, "Size in pixels": len(ys),
                             "Mean Intensity": values.mean(), "Minimum intensity": values.min(),
                             "Maximum intensity": values.max(), "Bounding Box Minimum_0": xs.min(),
                             "Bounding Box Minimum_1": ys.min(), "Bounding Box Maximum_0": xs.max() + 1,
                             "Bounding Box Maximum_1": ys.max() + 1, "Center of the object_0": xs.mean(),
                             "Center of the object_1": ys.mean()})
    assert len(rows) == len(expected) > 9
    for index, (row, want) in enumerate(zip(rows, expected)):
        assert int(row["object_id"]) == index
        for column, value in want.items():
            assert float(row[column]) == pytest.approx(value, rel=1e-6), (index, column)
    assert ndimage.label(objects[0, 0] > 0)[1] == sum(1 for r in rows if r["timestep"] == "0")


def test_hdf5_table_has_the_csv_columns_and_values(exported):
    _, rows, table, _ = exported
    assert list(table.dtype.names) == list(rows[0].keys())
    assert table.dtype["object_id"] == np.int64 and table.dtype["Mean Intensity"] == np.float32
    assert len(table) == len(rows)
    for name in table.dtype.names:
        np.testing.assert_allclose(table[name], [float(r[name]) for r in rows], rtol=1e-6)


@pytest.mark.parametrize("args, message", [
    (("--export_source", "Object Features", "--output_format", "npy"),
     "--output_format npy: Object Features are a table, written as csv or hdf5"),
    (("--export_source", "Probabilities", "--output_format", "csv"),
     "--output_format csv is for Object Features (a table)"),
    (("--export_source", "Object Features", "--export_source", "Probabilities"), "cannot include Objects or Object"),
])
def test_table_format_mistakes_are_one_clear_line(tmp_path, args, message):
    result = run_cli("--headless", "--no-progress", "--project", TIMESERIES, "--output_filename_format",
                     str(tmp_path / "{result_type}"), *args, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_cutout_gives_the_objects_parts_inside_the_box_in_whole_image_coordinates(exported, tmp_path):
    objects = exported[0]
    _export(tmp_path, "cut", "--export_source", "Object Features", "--output_format", "csv",
            "--cutout_subregion", "[(2,0,30,None,None),(4,60,105,None,None)]")  # t 2-3, x 0-59, y 30-104
    with open(tmp_path / "cut.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    expected = []
    for t in (2, 3):
        labels = objects[t, 0, 30:105, 0:60]
        for oid in np.unique(labels[labels > 0]):
            ys, xs = np.nonzero(labels == oid)
            expected.append((t, oid, len(ys), xs.min(), ys.min() + 30, xs.max() + 1, ys.max() + 31))
    got = [(int(r["timestep"]), int(r["labelimage_oid"]), float(r["Size in pixels"]),
            float(r["Bounding Box Minimum_0"]), float(r["Bounding Box Minimum_1"]),
            float(r["Bounding Box Maximum_0"]), float(r["Bounding Box Maximum_1"])) for r in rows]
    assert got == expected and len(got) >= 2
