"""``--prediction_maps``: Objects thresholded from a given probability map (ilastik's "Object Classification (from
prediction image)" input), through the real command line, compared with ``threshold_frame`` on the same frames."""

import dataclasses
import json
import os
import shutil
import signal

import h5py
import numpy as np
import psutil
import pytest
import tifffile
import zarr

from backend.compute.geometry import Roi
from backend.compute.threshold import ThresholdSettings, threshold_frame
from backend.errors import UserError
from backend.io import writers
from backend.io.project import open_project
from backend.io.sources import open_source
from backend.service import prediction_maps
from backend.service.export import ExportOptions
from backend.service.prediction_maps import MapInput, data_range, label_frame, normalize, open_input
from ilastik_desktop.cli.headless import run_prediction_maps
from ilastik_desktop.runtime.settings import Settings
from tests.conftest import run_cli
from tests.integration.test_faults import Run
from tests.unit.test_sources import _write_n5

OC_PROJECT = os.path.join("ilastik-timeseries", "pc-oc-133.ilp")
UNTRAINED_PC_PROJECT = os.path.join("ilastik-api", "PixelClassNoClassifier.ilp")


def blobs(shape: tuple[int, ...], channels: int, seed: int, spatial: int = 2) -> np.ndarray:
    """float32 probabilities in [0, 1] of shape ``shape + (channels,)``: noise below 0.4 and, in each frame (the
    last ``spatial`` axes), bright boxes in random channels."""
    rng = np.random.default_rng(seed)
    maps = (rng.random(shape + (channels,)) * 0.4).astype(np.float32)
    for frame in maps.reshape((-1,) + shape[-spatial:] + (channels,)):
        for _ in range(8):
            sizes = rng.integers(4, 9, spatial)
            corner = [rng.integers(0, n - s) for n, s in zip(frame.shape, sizes)]
            box = tuple(slice(c, c + s) for c, s in zip(corner, sizes))
            frame[box + (rng.integers(channels),)] = 0.95
    return maps


def write_h5(path, data: np.ndarray, axes: str, **attrs) -> None:
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("exported_data", data=data)
        ds.attrs["axistags"] = json.dumps({"axes": [{"key": a} for a in axes]})
        ds.attrs.update(attrs)


def objects(path: str, internal: str = "exported_data") -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[internal][()]


def pmaps(tmp_path, project: str, *specs: str, extra: tuple[str, ...] = ()):
    return run_cli("--headless", "--no-progress", "--project", project, "--prediction_maps", *specs, *extra,
                   cwd=str(tmp_path))


def test_oc_project_thresholds_each_frame_of_an_hdf5_map(tmp_path, data_dir):
    maps = blobs((5, 40, 60), 2, seed=1)
    write_h5(tmp_path / "maps.h5", maps, "tyxc")
    result = pmaps(tmp_path, os.path.join(data_dir, OC_PROJECT), "maps.h5/exported_data",
                   extra=("--export_source", "Objects"))
    assert result.returncode == 0, result.stderr
    written = str(tmp_path / "maps-exported_data_Objects.h5")  # {dataset_dir}/{nickname}_Objects
    assert f"wrote {written} (5 frames" in result.stderr
    labels = objects(written)
    assert labels.shape == (5, 40, 60, 1) and labels.dtype == np.uint32
    settings = ThresholdSettings()  # what pc-oc-133.ilp's ThresholdTwoLevels holds
    for t in range(5):
        expected = threshold_frame(maps[t][None], settings)[0]
        np.testing.assert_array_equal(labels[t, ..., 0], expected)
        assert expected.max() > 0
    assert f"highest object ID {labels.max()}" in result.stderr
    with h5py.File(written, "r") as f:
        assert [a["key"] for a in json.loads(f["exported_data"].attrs["axistags"])["axes"]] == list("tyxc")
        assert f["exported_data"].attrs["max_object_id"] == labels.max()


def test_project_settings_with_threshold_override_on_a_3d_zarr_map(tmp_path, data_dir):
    project = tmp_path / "oc.ilp"
    shutil.copyfile(os.path.join(data_dir, OC_PROJECT), project)
    with h5py.File(project, "r+") as f:  # the project's own settings differ from ilastik's defaults
        group = f["ThresholdTwoLevels"]
        for name, value in (("MinSize", 6), ("HighThreshold", 0.9), ("CurOperator", 1)):
            del group[name]
            group[name] = value
    maps = blobs((12, 30, 40), 3, seed=2, spatial=3)
    zarr.save_array(str(tmp_path / "maps.zarr"), maps)
    result = pmaps(tmp_path, str(project), "maps.zarr", extra=(
        "--input_axes", "zyxc", "--threshold", "channel=2,core_channel=1,low=0.45,sigmas=0.5:1:1",
        "--output_format", "tif"))
    assert result.returncode == 0, result.stderr
    labels = tifffile.imread(tmp_path / "maps_Objects.tif")
    settings = ThresholdSettings(method=1, min_size=6, high=0.9, low=0.45, sigmas=(0.5, 1.0, 1.0), channel=2,
                                 core_channel=1)
    expected = threshold_frame(maps, settings)
    assert expected.max() > 0
    np.testing.assert_array_equal(labels.reshape(expected.shape), expected)
    defaults = threshold_frame(maps, dataclasses.replace(settings, method=0, min_size=10, high=0.8))
    assert not np.array_equal(expected, defaults)  # the project's and the option's values made the difference


def test_untrained_project_rescales_uint8_and_drange_maps_in_a_batch(tmp_path, data_dir):
    maps = blobs((3, 30, 40), 1, seed=3)[..., 0]
    as_uint8 = np.round(maps * 255).astype(np.uint8)
    np.save(tmp_path / "bytes.npy", as_uint8)  # no drange: uint8's full range 0..255
    write_h5(tmp_path / "percent.h5", maps * 100, "tyx", drange=(0.0, 100.0))
    result = pmaps(tmp_path, os.path.join(data_dir, UNTRAINED_PC_PROJECT), "bytes.npy", "percent.h5",
                   extra=("--input_axes", "tyx"))
    assert result.returncode == 0, result.stderr
    assert "[1/2] bytes.npy: wrote" in result.stderr and "[2/2] percent.h5: wrote" in result.stderr
    assert "batch: 2 of 2 files written" in result.stderr
    settings = ThresholdSettings()
    for name, frames in (("bytes", as_uint8.astype(np.float32) / np.float32(255)),
                         ("percent", (maps * 100).astype(np.float32) / np.float32(100))):
        labels = objects(str(tmp_path / f"{name}_Objects.h5"))
        assert labels.shape == (3, 30, 40, 1)
        for t in range(3):
            np.testing.assert_array_equal(labels[t, ..., 0], threshold_frame(frames[t][None, ..., None],
                                                                              settings)[0])
        assert labels.max() > 0


def test_data_range_rule(tmp_path):
    """drange if the file has one, else an integer type's full range, else (float) the values as they are."""
    cases = {"u8.npy": (np.array([[0, 51, 255]], np.uint8), (0.0, 255.0)),
             "i16.npy": (np.array([[-32768, 0, 32767]], np.int16), (-32768.0, 32767.0)),
             "f.npy": (np.array([[0.0, 0.25, 1.5]], np.float32), None)}
    for name, (values, expected) in cases.items():
        np.save(tmp_path / name, values)
        assert data_range(open_source(str(tmp_path / name))) == expected, name
    write_h5(tmp_path / "d.h5", np.array([[0, 200, 400]], np.uint16), "yx", drange=(0, 400))
    source = open_source(str(tmp_path / "d.h5"))
    assert data_range(source) == (0.0, 400.0)
    values = source.read(Roi.from_shape(source.spatial_shape))
    np.testing.assert_array_equal(normalize(values, data_range(source)).ravel(), [0.0, 0.5, 1.0])
    stored = zarr.open_array(str(tmp_path / "d.zarr"), mode="w", shape=(4, 4), dtype=np.float32)
    stored.attrs["drange"] = [0, 10]
    assert data_range(open_source(str(tmp_path / "d.zarr"))) == (0.0, 10.0)
    _write_n5(str(tmp_path / "d.n5"), np.zeros((2, 4, 4), np.uint16), (2, 4, 4), "raw")
    with open(tmp_path / "d.n5" / "attributes.json") as f:
        attributes = json.load(f)
    with open(tmp_path / "d.n5" / "attributes.json", "w") as f:
        json.dump({**attributes, "drange": [0, 1000]}, f)
    assert data_range(open_source(str(tmp_path / "d.n5"))) == (0.0, 1000.0)
    write_h5(tmp_path / "bad.h5", np.zeros((2, 2), np.float32), "yx", drange=(1.0, 1.0))
    with pytest.raises(UserError, match="bad.h5/exported_data: its drange attribute"):
        data_range(open_source(str(tmp_path / "bad.h5")))


@pytest.mark.parametrize("option", ["channel=1", "method=hysteresis,core_channel=2"])
def test_channel_missing_from_the_map_is_one_line(tmp_path, data_dir, option):
    write_h5(tmp_path / "maps.h5", blobs((2, 20, 20), 1, seed=4), "tyxc")
    result = pmaps(tmp_path, os.path.join(data_dir, OC_PROJECT), "maps.h5", extra=("--threshold", option))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "maps.h5/exported_data" in lines[0] and "this map has 1 channel" in lines[0], lines
    assert "Traceback" not in result.stderr
    assert not [p for p in os.listdir(tmp_path) if "Objects" in p]


def test_unreadable_map_is_one_line_and_skipped_in_a_batch(tmp_path, data_dir):
    (tmp_path / "broken.h5").write_bytes(b"not an hdf5 file")
    write_h5(tmp_path / "good.h5", blobs((2, 20, 20), 1, seed=5), "tyxc")
    project = os.path.join(data_dir, OC_PROJECT)
    alone = pmaps(tmp_path, project, "broken.h5")
    assert alone.returncode == 2
    assert alone.stderr.strip().splitlines() == [alone.stderr.strip()] and "broken.h5" in alone.stderr
    assert "Traceback" not in alone.stderr
    batch = pmaps(tmp_path, project, "*.h5")
    assert batch.returncode == 1, batch.stderr
    assert "[1/2] skipped" in batch.stderr and "broken.h5" in batch.stderr
    assert "[2/2]" in batch.stderr and "batch: 1 of 2 files written, 1 failed" in batch.stderr
    assert objects(str(tmp_path / "good_Objects.h5")).shape == (2, 20, 20, 1)
    assert not (tmp_path / "broken_Objects.h5").exists()


def test_prediction_maps_refuse_other_export_sources(tmp_path, data_dir):
    write_h5(tmp_path / "maps.h5", blobs((1, 20, 20), 1, seed=6), "tyxc")
    result = pmaps(tmp_path, os.path.join(data_dir, OC_PROJECT), "maps.h5",
                   extra=("--export_source", "Probabilities"))
    assert result.returncode == 2 and "--prediction_maps exports Objects and Object Features only" in result.stderr


def test_two_maps_never_write_one_output(tmp_path, data_dir):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_h5(tmp_path / folder / "maps.h5", blobs((1, 20, 20), 1, seed=7), "tyxc")
    result = pmaps(tmp_path, os.path.join(data_dir, OC_PROJECT), "a/maps.h5", "b/maps.h5",
                   extra=("--output_filename_format", str(tmp_path / "objects")))
    assert result.returncode == 1, result.stderr
    assert "[1/2] a/maps.h5: wrote" in result.stderr
    assert "[2/2] skipped b/maps.h5: its output" in result.stderr and "output of a/maps.h5" in result.stderr


@pytest.mark.timeout(240)
def test_a_declared_huge_map_is_labelled_frame_by_frame_in_flat_memory_until_stopped(tmp_path, data_dir):
    """100 GB of declared (never written) float32 frames: memory stays flat, SIGTERM removes the partial output."""
    with h5py.File(tmp_path / "huge.h5", "w") as f:
        f.create_dataset("maps", shape=(100_000, 512, 512), chunks=(1, 512, 512), dtype=np.float32, fillvalue=0)
    out = tmp_path / "out"
    out.mkdir()
    run = Run("--headless", "--project", os.path.join(data_dir, OC_PROJECT), "--prediction_maps",
              str(tmp_path / "huge.h5"), "--input_axes", "tyx", "--output_format", "zarr",
              "--output_filename_format", str(out / "objects"))
    try:
        app = psutil.Process(run.process.pid)
        run.wait_progress(20)
        after_20 = app.memory_info().rss >> 20
        run.wait_progress(120)
        grown = (app.memory_info().rss >> 20) - after_20
        code, took = run.interrupt(signal.SIGTERM)
    finally:
        if run.process.poll() is None:
            run.kill()
    stderr = "".join(run.stderr)
    assert grown < 64, f"the app grew by {grown} MB over 100 frames of 1 MB"
    assert code == 130 and took < 5, (code, took, stderr[-3000:])
    assert "Traceback" not in stderr and "interrupted; unfinished output was removed" in stderr
    assert os.listdir(out) == []


def test_label_frame_contract():
    """What a replacement of label_frame (a blockwise engine) must keep: boxes read inside the frame, uint32
    (z, y, x) labels written over the whole frame, equal to threshold_frame's, and the highest ID returned."""
    frame = blobs((10, 30, 40), 2, seed=8, spatial=3)
    settings = ThresholdSettings(method=1, channel=1, core_channel=0, min_size=4)
    out = np.full(frame.shape[:3], 7, np.uint32)
    shares = []

    def read_box(start, stop):
        assert all(0 <= a < b <= n for a, b, n in zip(start, stop, frame.shape))
        return frame[tuple(slice(a, b) for a, b in zip(start, stop))]

    def write_box(start, labels):
        assert labels.dtype == np.uint32 and labels.ndim == 3
        out[tuple(slice(a, a + n) for a, n in zip(start, labels.shape))] = labels

    highest = label_frame(read_box, frame.shape[:3], settings, write_box, shares.append)
    expected = threshold_frame(frame, settings)
    np.testing.assert_array_equal(out, expected)
    assert highest == expected.max() > 0 and shares[-1] == 1.0


def test_raw_data_pairs_with_the_maps_in_order_and_names_the_outputs(tmp_path, data_dir):
    """As ilastik's Object Classification (from prediction image) headless: ``--raw_data`` and ``--prediction_maps``
    paired in order, outputs named from the raw data (its {nickname} and {dataset_dir}); the raw data without axes
    takes the project lane's (t, y, x)."""
    (tmp_path / "raw").mkdir()
    (tmp_path / "maps").mkdir()
    maps = {name: blobs((3, 24, 32), 1, seed=seed) for name, seed in (("m1", 11), ("m2", 12))}
    for index, (name, values) in enumerate(maps.items()):
        write_h5(tmp_path / "maps" / f"{name}.h5", values, "tyxc")
        with h5py.File(tmp_path / "raw" / f"cells_{index + 1}.h5", "w") as f:
            f["data"] = np.full((3, 24, 32), index, np.uint8)
    result = pmaps(tmp_path, os.path.join(data_dir, OC_PROJECT), "maps/*.h5", extra=(
        "--raw_data", "raw/cells_1.h5/data", "raw/cells_2.h5/data"))
    assert result.returncode == 0, result.stderr
    assert "batch: 2 of 2 files written" in result.stderr
    for index, values in enumerate(maps.values()):
        written = tmp_path / "raw" / f"cells_{index + 1}-data_Objects.h5"  # ilastik's raw data {nickname}
        assert f"wrote {written}" in result.stderr
        labels = objects(str(written))
        expected = np.stack([threshold_frame(frame[None], ThresholdSettings())[0] for frame in values])
        assert expected.max() > 0
        np.testing.assert_array_equal(labels[..., 0], expected)
    assert not [p for p in os.listdir(tmp_path / "maps") if "Objects" in p]


def test_raw_data_and_maps_that_do_not_pair_are_one_line(tmp_path, data_dir):
    project = os.path.join(data_dir, OC_PROJECT)
    write_h5(tmp_path / "maps.h5", blobs((2, 20, 20), 1, seed=13), "tyxc")
    np.save(tmp_path / "raw.npy", np.zeros((2, 20, 21), np.uint8))
    np.save(tmp_path / "other.npy", np.zeros((2, 20, 20), np.uint8))
    counts = pmaps(tmp_path, project, "maps.h5", extra=("--raw_data", "raw.npy", "other.npy"))
    assert counts.returncode == 2 and counts.stderr.count("\n") == 1, counts.stderr
    assert "--raw_data gives 2 files but --prediction_maps 1 file: they are paired in order" in counts.stderr
    shapes = pmaps(tmp_path, project, "maps.h5", extra=("--raw_data", "raw.npy", "--input_axes", "tyx,tyxc"))
    assert shapes.returncode == 2 and shapes.stderr.count("\n") == 1, shapes.stderr
    assert "maps.h5/exported_data: its shape (t, z, y, x) (2, 1, 20, 20) differs from that of its raw data" \
        in shapes.stderr and "raw.npy (2, 1, 20, 21)" in shapes.stderr
    assert "Traceback" not in shapes.stderr and not [p for p in os.listdir(tmp_path) if "Objects" in p]
    inputs = open_input(str(tmp_path / "maps.h5"), None, str(tmp_path / "other.npy"), "tyx")
    try:  # the raw data stays available to the run (per-object measurements need its intensities)
        assert inputs.raw.spatial_shape == inputs.map.spatial_shape and inputs.named_after is inputs.raw
    finally:
        inputs.close()


class WideLabels:
    """A stand-in for label_frame (a blockwise engine) on (8, 10) frames: two boxes per frame, uint32, except frame
    1's second box: uint64 IDs above 2**32 - 1. ``expected`` collects what it wrote."""

    big = 2**32 + 7

    def __init__(self, frames: int):
        self.frame, self.expected = 0, np.zeros((frames, 8, 10), np.uint64)

    def __call__(self, read_box, frame_shape, settings, write_box, progress=None, threads=2) -> int:
        assert read_box((0, 0, 0), frame_shape).shape == (1, 8, 10, 1)
        t, self.frame = self.frame, self.frame + 1
        top = np.full((1, 4, 10), t + 1, np.uint32)
        bottom = np.full((1, 4, 10), self.big + t if t == 1 else t + 10, np.uint64 if t == 1 else np.uint32)
        for start, labels in (((0, 0, 0), top), ((0, 4, 0), bottom)):
            write_box(start, labels)
            self.expected[t, start[1]:start[1] + 4] = labels[0]
        return int(max(top.max(), bottom.max()))


@pytest.mark.parametrize("fmt", ["hdf5", "zarr", "tif", "npy"])
def test_object_ids_beyond_uint32_widen_the_output_to_uint64(tmp_path, monkeypatch, fmt):
    """IDs above 2**32 - 1 from the second frame on: the output becomes uint64 with every value kept, and says its
    highest ID (max_object_id)."""
    np.save(tmp_path / "tiny.npy", np.random.default_rng(14).random((3, 8, 10), np.float32))
    fake = WideLabels(3)
    monkeypatch.setattr(prediction_maps, "label_frame", fake)
    monkeypatch.setattr(writers, "WIDEN_SLAB_ITEMS", 16)  # the copy into the wider array cut into many slabs
    options = ExportOptions(kind="Objects", fmt=fmt, filename_pattern=str(tmp_path / "out" / "{nickname}"),
                            progress=False)
    (tmp_path / "out").mkdir()
    result, highest = prediction_maps.export_objects(MapInput(open_source(str(tmp_path / "tiny.npy"), "tyx")),
                                                     "tiny", ThresholdSettings(), options)
    assert highest == WideLabels.big + 1 and os.listdir(tmp_path / "out") == [os.path.basename(result.path)]
    if fmt == "hdf5":
        with h5py.File(result.path, "r") as f:
            labels, recorded = f["exported_data"][()], f["exported_data"].attrs["max_object_id"]
    elif fmt == "zarr":
        array = zarr.open_group(result.path, mode="r")["0"]
        labels, recorded = array[()], array.attrs["max_object_id"]
    elif fmt == "tif":
        with tifffile.TiffFile(result.path) as f:
            labels, recorded = f.asarray(), f.shaped_metadata[0]["max_object_id"]
    else:
        labels, recorded = np.load(result.path), highest  # .npy has no place for attributes
    assert labels.dtype == np.uint64 and recorded == highest
    np.testing.assert_array_equal(labels.reshape(fake.expected.shape), fake.expected)


def test_the_summary_line_says_uint64(tmp_path, monkeypatch, capsys, data_dir):
    np.save(tmp_path / "tiny.npy", np.zeros((2, 8, 10), np.float32))
    monkeypatch.setattr(prediction_maps, "label_frame", WideLabels(2))
    project = os.path.join(data_dir, OC_PROJECT)
    settings = Settings(project=project, input_axes="tyx", prediction_maps=(str(tmp_path / "tiny.npy"),),
                        export=ExportOptions(kind="Objects", progress=False))
    assert run_prediction_maps(settings, open_project(project)) == 0
    assert f"highest object ID {WideLabels.big + 1}, uint64 labels)" in capsys.readouterr().err
