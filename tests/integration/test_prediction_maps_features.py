"""``--prediction_maps`` with ``--export_source "Object Features"``: the objects' table measured on the raw data
given with the maps (ilastik's "from prediction image" workflow), from the blocks of labels as they are written;
compared with features computed directly (scipy.ndimage) from whole labels and raw data."""

from __future__ import annotations

import csv
import os

import h5py
import numpy as np
import pytest
from scipy import ndimage

from backend.compute.threshold import ThresholdSettings, threshold_frame
from backend.io.sources import open_source
from backend.service import blockwise_objects
from backend.service.export import ExportOptions
from backend.service.prediction_maps import MapInput, export_objects
from tests.integration.test_prediction_maps import OC_PROJECT, blobs, objects, pmaps, write_h5


def direct_rows(labels: np.ndarray, raw: np.ndarray) -> list[dict]:
    """The table's rows computed directly per object: ``labels`` (t, z, y, x), ``raw`` (t, z, y, x, c)."""
    rows = []
    volumetric = labels.shape[1] > 1
    axes = 3 if volumetric else 2
    for t in range(labels.shape[0]):
        ids = np.unique(labels[t][labels[t] > 0])
        boxes = ndimage.find_objects(labels[t])
        centres = ndimage.center_of_mass(np.ones(labels[t].shape), labels[t], ids)
        for oid, centre in zip(ids, centres):
            inside = labels[t] == oid
            row = {"object_id": len(rows), "timestep": t, "labelimage_oid": oid, "Size in pixels": inside.sum()}
            for name, reduce in (("Mean Intensity", np.mean), ("Minimum intensity", np.min),
                                 ("Maximum intensity", np.max)):
                values = [reduce(raw[t][..., c][inside].astype(np.float64)) for c in range(raw.shape[-1])]
                row.update({name: values[0]} if len(values) == 1 else {f"{name}_{c}": v for c, v in enumerate(values)})
            box = boxes[oid - 1]
            for a in range(axes):  # x, y[, z] from (z, y, x)
                zyx = 2 - a
                row[f"Bounding Box Minimum_{a}"] = box[zyx].start
                row[f"Bounding Box Maximum_{a}"] = box[zyx].stop
                row[f"Center of the object_{a}"] = centre[zyx]
            rows.append(row)
    return rows


def assert_rows(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected) > 5
    for index, (row, want) in enumerate(zip(got, expected)):
        for column, value in want.items():
            assert float(row[column]) == pytest.approx(float(value), rel=1e-6), (index, column)


def table_rows(path: str) -> list[dict]:
    if path.endswith(".csv"):
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    with h5py.File(path, "r") as f:
        table = f["table"][()]
    return [dict(zip(table.dtype.names, row)) for row in table]


@pytest.fixture
def map_and_raw(tmp_path):
    maps = blobs((3, 40, 50), 1, seed=21)
    write_h5(tmp_path / "maps.h5", maps, "tyxc")
    raw = np.random.default_rng(22).integers(0, 60000, (3, 40, 50), np.uint16)
    with h5py.File(tmp_path / "cells.h5", "w") as f:
        f["data"] = raw
    labels = np.stack([threshold_frame(frame[None], ThresholdSettings())[0] for frame in maps])
    return labels[:, None], raw[:, None, ..., None]


def test_objects_and_their_features_from_one_labelling(tmp_path, data_dir, map_and_raw):
    labels, raw = map_and_raw
    result = pmaps(tmp_path, os.path.join(data_dir, OC_PROJECT), "maps.h5", extra=(
        "--raw_data", "cells.h5/data", "--export_source", "Objects", "--export_source", "Object Features"))
    assert result.returncode == 0, result.stderr
    written, table = tmp_path / "cells-data_Objects.h5", str(tmp_path / "cells-data_Object_Features.h5")
    assert f"wrote {written}, {table} (3 frames" in result.stderr and result.stderr.count("\n") == 1
    np.testing.assert_array_equal(objects(str(written))[..., 0], labels[:, 0])
    assert_rows(table_rows(table), direct_rows(labels, raw))


def test_features_alone_as_csv_write_no_objects(tmp_path, data_dir, map_and_raw):
    labels, raw = map_and_raw
    result = pmaps(tmp_path, os.path.join(data_dir, OC_PROJECT), "maps.h5", extra=(
        "--raw_data", "cells.h5/data", "--export_source", "Object Features", "--output_format", "csv"))
    assert result.returncode == 0, result.stderr
    assert_rows(table_rows(str(tmp_path / "cells-data_Object_Features.csv")), direct_rows(labels, raw))
    assert sorted(os.listdir(tmp_path)) == ["cells-data_Object_Features.csv", "cells.h5", "maps.h5"]


@pytest.mark.parametrize("extra, message", [
    (("--export_source", "Object Features"),
     "Object Features need the raw data: give --raw_data (paired with the maps in order)"),
    (("--raw_data", "cells.h5/data", "--export_source", "Objects", "--export_source", "Object Features",
      "--output_filename_format", "out"), "need {result_type} in the name"),
    (("--raw_data", "cells.h5/data", "--export_source", "Object Features", "--output_format", "tif"),
     "--output_format tif: Object Features are a table, written as csv or hdf5"),
])
def test_mistakes_are_one_line_and_write_nothing(tmp_path, data_dir, map_and_raw, extra, message):
    result = pmaps(tmp_path, os.path.join(data_dir, OC_PROJECT), "maps.h5", extra=extra)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["cells.h5", "maps.h5"]


def test_3d_objects_spanning_blocks_are_measured_whole(tmp_path, monkeypatch):
    """Blocks much smaller than the frame (objects across several), two raw channels: each block's partial
    numbers merged give the whole objects' features."""
    monkeypatch.setattr(blockwise_objects, "default_block_shape", lambda frame_shape: (3, 7, 9))
    maps = blobs((2, 16, 40, 44), 1, seed=23, spatial=3)
    raw = np.random.default_rng(24).random((2, 16, 40, 44, 2)).astype(np.float32)
    np.save(tmp_path / "maps.npy", maps[..., 0])
    np.save(tmp_path / "raw.npy", raw)
    inputs = MapInput(open_source(str(tmp_path / "maps.npy"), "tzyx"), open_source(str(tmp_path / "raw.npy"), "tzyxc"))
    options = ExportOptions(kind="Object Features", fmt="hdf5", filename_pattern=str(tmp_path / "{result_type}"),
                            progress=False)
    result, highest = export_objects(inputs, "maps", ThresholdSettings(min_size=4), options)
    labels = np.stack([threshold_frame(frame[..., None], ThresholdSettings(min_size=4)) for frame in maps[..., 0]])
    assert highest == labels.max() > 0 and result.paths == (str(tmp_path / "Object_Features.h5"),)
    rows = table_rows(result.path)
    assert_rows(rows, direct_rows(labels, raw))
    assert "Bounding Box Minimum_2" in rows[0] and "Mean Intensity_1" in rows[0]
