"""Issue acceptance through the command line: ilastik's own predictions, the vigra oracle, time series."""

import json
import os
import subprocess

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from tests.conftest import run_cli, run_oracle


def assert_ilastik_tolerance(ours: np.ndarray, theirs: np.ndarray) -> None:
    """ilastik's cross-platform rule: <= 0.1 % of values off by >= 0.015, none by >= 0.15."""
    assert ours.shape == theirs.shape
    diff = np.abs(ours.astype(np.float64) - theirs)
    assert (diff >= 0.015).mean() <= 0.001, (diff >= 0.015).mean()
    assert diff.max() < 0.15, diff.max()


def export(tmp_path, *args, name="out", fmt="npy"):
    result = run_cli("--headless", "--no-progress", "--output_format", fmt,
                     "--output_filename_format", str(tmp_path / name), *args)
    assert result.returncode == 0, result.stderr
    return result


def test_2d_png_project_reproduces_ilastik(tmp_path, data_dir):
    api = os.path.join(data_dir, "ilastik-api")
    export(tmp_path, "--project", os.path.join(api, "PixelClass.ilp"),
           "--raw_data", os.path.join(api, "Data_1channel.png"))
    ours = np.load(tmp_path / "out.npy")
    assert ours.shape == (128, 128, 2) and ours.dtype == np.float32
    assert_ilastik_tolerance(ours, np.load(os.path.join(api, "res-Data_1channel_pc1xyc.npy")))


def test_3d_project_reproduces_ilastik_blockwise(tmp_path, data_dir):
    api = os.path.join(data_dir, "ilastik-api")
    export(tmp_path, "--project", os.path.join(api, "PixelClass3D.ilp"), "--block_shape", "24,24,40")
    ours = np.load(tmp_path / "out.npy")
    assert ours.shape == (64, 64, 64, 2)
    assert_ilastik_tolerance(ours, np.load(os.path.join(api, "res-Data_3D_pc3d.npy")))


def test_seed_project_matches_vigra_reference(tmp_path, data_dir, vigra_reference):
    seed = os.path.join(data_dir, "seed")
    raw = os.path.join(seed, "raw.h5/exported_data")
    export(tmp_path, "--project", os.path.join(seed, "pc.ilp"), "--raw_data", raw, "--block_shape", "64,64")
    reference = tmp_path / "reference.npy"
    subprocess.run([*vigra_reference, "--project",
                    os.path.join(seed, "pc.ilp"), "--raw", raw, "--out", str(reference)], check=True, timeout=600)
    assert_ilastik_tolerance(np.load(tmp_path / "out.npy"), np.load(reference).reshape(193, 185, 2))


def test_forest_prediction_is_bit_identical_to_vigra(tmp_path, data_dir, vigra_python):
    from backend.io.project import open_project

    seed = os.path.join(data_dir, "seed")
    features, predictions = tmp_path / "x.npy", tmp_path / "p.npy"
    run_oracle(vigra_python, "features", os.path.join(seed, "pc.ilp"), os.path.join(seed, "raw.h5/exported_data"),
               str(features))
    run_oracle(vigra_python, "predict", os.path.join(seed, "pc.ilp"), str(features), str(predictions))
    ours = open_project(os.path.join(seed, "pc.ilp")).classifier.compile().predict(np.load(features))
    assert np.array_equal(ours, np.load(predictions))


def test_time_series_exports_every_time_step(tmp_path, data_dir):
    series = os.path.join(data_dir, "ilastik-timeseries")
    export(tmp_path, "--project", os.path.join(series, "mitocheckPixelClassification.ilp"), fmt="hdf5")
    with h5py.File(tmp_path / "out.h5", "r") as f:
        data = f["exported_data"][()]
        axes = "".join(a["key"] for a in json.loads(f["exported_data"].attrs["axistags"])["axes"])
    assert axes == "txyzc"
    assert data.shape == (9, 99, 105, 1, 2)
    assert np.allclose(data.sum(axis=-1), 1.0, atol=1e-5)
    assert all(data[t].std() > 0.01 for t in range(9))  # every frame really computed


def test_formats_cutout_and_result_kinds_agree(tmp_path, data_dir):
    api = os.path.join(data_dir, "ilastik-api")
    base = ["--project", os.path.join(api, "PixelClass3D.ilp")]
    cut = ["--cutout_subregion", "[(10,20,30,None),(30,50,64,None)]"]
    export(tmp_path, *base, name="full")
    full = np.load(tmp_path / "full.npy")
    for fmt in ("hdf5", "npy", "tif", "zarr"):
        export(tmp_path, *base, *cut, "--block_shape", "8,16,16", name=f"cut_{fmt}", fmt=fmt)
    expected = full[10:30, 20:50, 30:64]
    with h5py.File(tmp_path / "cut_hdf5.h5", "r") as f:
        assert np.array_equal(f["exported_data"][()], expected)
    assert np.array_equal(np.load(tmp_path / "cut_npy.npy"), expected)
    assert np.array_equal(tifffile.imread(tmp_path / "cut_tif.tif"), expected)
    ome_zarr = zarr.open_array(str(tmp_path / "cut_zarr.zarr/0"), mode="r")[:]  # OME-Zarr: image 0, czyx
    assert np.array_equal(np.moveaxis(ome_zarr, 0, -1), expected)
    export(tmp_path, *base, "--export_source", "Simple Segmentation", name="seg")
    assert np.array_equal(np.load(tmp_path / "seg.npy")[..., 0], np.argmax(full, axis=-1) + 1)
    export(tmp_path, *base, "--export_source", "Uncertainty", name="unc")
    top = np.sort(full, axis=-1)
    assert np.allclose(np.load(tmp_path / "unc.npy")[..., 0], 1 - (top[..., -1] - top[..., -2]), atol=1e-6)
    export(tmp_path, *base, "--export_source", "Features", name="feat")
    assert np.load(tmp_path / "feat.npy").shape == (64, 64, 64, 11)
    assert not list(tmp_path.glob(".*.partial"))


def test_default_output_next_to_the_data(tmp_path, data_dir, copy_of):
    raw = copy_of(os.path.join(data_dir, "seed", "raw.h5"))
    result = run_cli("--headless", "--no-progress", "--project", os.path.join(data_dir, "seed", "pc.ilp"),
                     "--raw_data", raw + "/exported_data")
    assert result.returncode == 0, result.stderr
    # named as ilastik names it: from the given file and its internal path (DatasetInfo.create_nickname)
    assert os.path.exists(tmp_path / "raw-exported_data_Probabilities.h5")
    assert "(1 block," in result.stderr and "Mvoxel/s" in result.stderr


def test_retrained_forest_loads_in_vigra_and_predicts_identically(tmp_path, data_dir, vigra_python, copy_of):
    from backend.io.project import open_project

    seed = os.path.join(data_dir, "seed")
    project = copy_of(os.path.join(seed, "pc.ilp"))
    raw = os.path.join(seed, "raw.h5/exported_data")
    export(tmp_path, "--project", project, "--raw_data", raw, "--retrain", name="retrained")
    reopened = open_project(project)
    assert reopened.classifier.tree_count == 100 and reopened.classifier.known_labels == (1, 2)
    features, predictions = tmp_path / "x.npy", tmp_path / "p.npy"
    run_oracle(vigra_python, "features", project, raw, str(features))
    run_oracle(vigra_python, "predict", project, str(features), str(predictions))
    assert np.array_equal(reopened.classifier.compile().predict(np.load(features)), np.load(predictions))


@pytest.mark.timeout(600)
def test_demo_project_opens_in_vigra_and_agrees(tmp_path, vigra_reference):

    result = run_cli("--demo-project", str(tmp_path / "demo"), "--headless", "--no-progress",
                     "--output_format", "npy", "--output_filename_format", str(tmp_path / "demo_out"))
    assert result.returncode == 0, result.stderr
    ours = np.load(tmp_path / "demo_out.npy")
    reference = tmp_path / "ref.npy"
    subprocess.run([*vigra_reference, "--project",
                    str(tmp_path / "demo" / "demo.ilp"), "--raw", str(tmp_path / "demo" / "demo_raw.h5/data"),
                    "--out", str(reference)], check=True, timeout=600)
    assert_ilastik_tolerance(ours, np.load(reference))
    from backend.io.synthetic import blob_volume

    _, mask = blob_volume(ours.shape[:3], seed=0)
    assert ((ours[..., 1] > 0.5) == mask).mean() > 0.95
