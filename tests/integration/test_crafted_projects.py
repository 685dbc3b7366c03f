"""Crafted and damaged projects: a real project copied and then damaged with h5py, one way per case. Each is
refused by the headless command in one line naming the project file and the HDF5 path (exit code 2, no
traceback), before anything large is allocated.

The cases run the command's ``main`` in this process (each is refused before any process starts; one
interpreter per case took 100 s); one case and the successful export go through a real subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import h5py
import numpy as np
import pytest

from ilastik_desktop.cli.headless import INTERRUPTING
from ilastik_desktop.cli.main import main
from tests.conftest import run_cli
from tests.integration.test_cli_errors import _assert_one_line_error

pytestmark = pytest.mark.timeout(180)

PC = "PixelClassification"
CF = f"{PC}/ClassifierForests"
FOREST = f"{CF}/Forest0000"
RAW = "Input Data/infos/lane0000/Raw Data"
BLOCK = f"{PC}/LabelSets/labels000/block0000"  # (1, 3, 3, 1) uint8 at [32:33,37:40,50:53,0:1], axes zyxc


@pytest.fixture
def api(data_dir, tmp_path):
    """The shared 3D project and its raw data, copied: the project is damaged by each case."""
    for name in ("PixelClass3D.ilp", "Data_3D.npy"):
        shutil.copyfile(os.path.join(data_dir, "ilastik-api", name), tmp_path / name)
    return tmp_path


def arguments(folder, *args) -> list[str]:
    return ["--headless", "--no-progress", "--project", str(folder / "PixelClass3D.ilp"),
            "--raw_data", str(folder / "Data_3D.npy"), "--output_format", "npy", *args]


def headless(folder, *args) -> subprocess.CompletedProcess:
    return run_cli(*arguments(folder, *args), timeout=150)


@pytest.fixture
def in_process(capsys):
    """Run the command's ``main`` here: its exit code and what it printed, as ``run_cli`` gives them (the
    command's signal handlers are put back afterwards)."""
    saved = {signum: signal.getsignal(signum) for signum in INTERRUPTING}

    def run(folder, *args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = main(arguments(folder, *args))
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    yield run
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def replace(f: h5py.File, name: str, value=None, group: bool = False) -> None:
    """Put ``value`` (or a group) where ``name`` was."""
    if name in f or isinstance(f.get(name, getlink=True), h5py.SoftLink):
        del f[name]
    if group:
        f.create_group(name)
    else:
        f[name] = value


def first_tree(f: h5py.File) -> str:
    return f"{FOREST}/" + sorted(k for k in f[FOREST] if not k.startswith("_"))[0]


def with_threshold(f: h5py.File, **changes) -> None:
    """ilastik's thresholding parameters, with ``changes`` (SmootherSigma given as x)."""
    values = {"CurOperator": 0, "MinSize": 10, "MaxSize": 1_000_000, "HighThreshold": 0.8, "LowThreshold": 0.5,
              "Channel": 0, "CoreChannel": 0}
    sigma_x = changes.pop("x", 1.0)
    values.update(changes)
    group = f.create_group("ThresholdTwoLevels")
    for key, value in values.items():
        group[key] = value
    for axis, sigma in (("z", 1.0), ("y", 1.0), ("x", sigma_x)):
        group[f"SmootherSigma/{axis}"] = sigma


def soft_link_loop(f: h5py.File) -> None:
    del f["FeatureSelections"]
    f["FeatureSelections"] = h5py.SoftLink("/Elsewhere")
    f["Elsewhere"] = h5py.SoftLink("/FeatureSelections")


def relabel(f: h5py.File, values: np.ndarray, slice_text: str | None = None) -> None:
    """Block 0 holding ``values`` (its blockSlice kept unless ``slice_text`` is given)."""
    attrs = dict(f[BLOCK].attrs)
    del f[BLOCK]
    ds = f.create_dataset(BLOCK, data=values)
    for key, value in attrs.items():
        ds.attrs[key] = value
    if slice_text is not None:
        ds.attrs["blockSlice"] = slice_text


def huge_label_block(f: h5py.File) -> None:
    """A block declaring 2^31 voxels (a file of a few hundred KB: nothing of it is written)."""
    axistags = f[BLOCK].attrs["axistags"]
    del f[BLOCK]
    ds = f.create_dataset(BLOCK, shape=(2048, 1024, 1024, 1), dtype=np.uint8, chunks=(64, 64, 64, 1),
                          compression="gzip")
    ds.attrs["blockSlice"] = "[0:2048,0:1024,0:1024,0:1]"
    ds.attrs["axistags"] = axistags


# (case, damage, fragments of the one-line error besides the project's name)
OPENING = [
    ("topology of strings", lambda f: replace(f, f"{first_tree(f)}/topology", np.array([b"x"] * 11)),
     ["/topology", "should hold integers"]),
    ("forest labels of strings", lambda f: replace(f, f"{FOREST}/_ext_param/labels", np.array([b"a", b"b"])),
     ["_ext_param/labels", "should hold"]),
    ("known labels of strings", lambda f: replace(f, f"{CF}/known_labels", np.array([b"1", b"2"])),
     ["/known_labels", "should hold"]),
    ("column_count_ NaN", lambda f: replace(f, f"{FOREST}/_ext_param/column_count_", np.array([np.nan])),
     ["column_count_", "outside 1 to"]),
    ("column_count_ of strings", lambda f: replace(f, f"{FOREST}/_ext_param/column_count_", b"11"),
     ["column_count_", "should hold"]),
    ("a tree stored as a dataset", lambda f: replace(f, first_tree(f), np.arange(3)),
     ["/Tree_", "should be a group but is a dataset"]),
    ("a forest stored as a dataset", lambda f: replace(f, FOREST, np.arange(3)),
     ["/Forest0000", "should be a group but is a dataset"]),
    ("FeatureIds missing", lambda f: f.__delitem__("FeatureSelections/FeatureIds"),
     ["/FeatureSelections/FeatureIds", "is missing"]),
    ("a lane stored as a dataset", lambda f: replace(f, "Input Data/infos/lane0000", np.arange(3)),
     ["/Input Data/infos/lane0000", "should be a group"]),
    ("axistags not JSON", lambda f: replace(f, f"{RAW}/axistags", b"{not json"),
     ["Raw Data/axistags", "not vigra's JSON"]),
    ("axistags without axes", lambda f: replace(f, f"{RAW}/axistags", b'{"keys": []}'),
     ["Raw Data/axistags", "not vigra's JSON"]),
    ("axistags naming odd axes", lambda f: replace(f, f"{RAW}/axistags", b'{"axes": [{"key": "q"}]}'),
     ["Raw Data/axistags", "'q'"]),
    ("shape of strings", lambda f: replace(f, f"{RAW}/shape", np.array([b"64", b"64", b"64", b"1"])),
     ["Raw Data/shape", "should hold integers"]),
    ("ilastikVersion a group", lambda f: replace(f, "ilastikVersion", group=True),
     ["/ilastikVersion", "should be a dataset but is a group"]),
    ("LabelColors 1-D", lambda f: replace(f, f"{PC}/LabelColors", np.array([255, 0, 0])),
     ["/LabelColors", "should be 2-d"]),
    ("LabelColors of strings", lambda f: replace(f, f"{PC}/LabelColors", np.array([[b"r", b"g", b"b"]] * 2)),
     ["/LabelColors", "should hold"]),
    ("CurOperator a string", lambda f: with_threshold(f, CurOperator=b"simple"),
     ["ThresholdTwoLevels/CurOperator", "should hold"]),
    ("MinSize NaN", lambda f: with_threshold(f, MinSize=np.nan),
     ["ThresholdTwoLevels/MinSize", "outside"]),
    ("SmootherSigma 1e9", lambda f: with_threshold(f, x=1e9),
     ["ThresholdTwoLevels/SmootherSigma/x", "outside 0 to 50"]),
    ("HighThreshold 2", lambda f: with_threshold(f, HighThreshold=2.0),
     ["ThresholdTwoLevels/HighThreshold", "is 2, outside 0 to 1"]),
    ("PixelClassification a dataset", lambda f: replace(f, PC, np.arange(3)),
     ["/PixelClassification", "should be a group but is a dataset"]),
    ("a soft-link loop", soft_link_loop, ["/FeatureSelections", "cannot be read"]),
    ("known labels beyond the classes", lambda f: replace(f, f"{CF}/known_labels", np.array([1, 65535])),
     ["/known_labels", "outside 0 to 99"]),
    ("workflowName a number", lambda f: replace(f, "workflowName", 3), ["/workflowName", "should hold text"]),
    ("Scales of strings", lambda f: replace(f, "FeatureSelections/Scales", np.array([b"1"] * 7)),
     ["/FeatureSelections/Scales", "should hold"]),
    ("a link to another file", lambda f: replace(f, "FeatureSelections/Scales", h5py.ExternalLink("/etc/x", "/a")),
     ["/FeatureSelections/Scales", "links to another file"]),
]

LABELS = [
    ("label 65535", lambda f: relabel(f, np.full((1, 3, 3, 1), 65535, np.uint16)), [BLOCK, "outside 0 to 2"]),
    ("label 255", lambda f: relabel(f, np.full((1, 3, 3, 1), 255, np.uint8)), [BLOCK, "outside 0 to 2"]),
    ("a 2^31-voxel block", huge_label_block, [BLOCK, "lies outside the image"]),
    ("a shape that disagrees with blockSlice", lambda f: relabel(f, np.ones((1, 4, 4, 1), np.uint8)),
     [BLOCK, "has shape (1, 4, 4, 1) but its blockSlice is [32:33,37:40,50:53,0:1]"]),
    ("a block beyond the image", lambda f: relabel(f, np.ones((1, 3, 3, 1), np.uint8), "[32:33,70:73,50:53,0:1]"),
     [BLOCK, "lies outside the image"]),
    ("label axistags not JSON", lambda f: f[BLOCK].attrs.__setitem__("axistags", "{oops"), [BLOCK, "not vigra's JSON"]),
    ("LabelSets a dataset", lambda f: replace(f, f"{PC}/LabelSets", np.arange(3)),
     ["/PixelClassification/LabelSets", "should be a group"]),
]


@pytest.mark.parametrize("damage, fragments", [case[1:] for case in OPENING], ids=[case[0] for case in OPENING])
def test_a_damaged_project_is_refused_in_one_line(api, in_process, damage, fragments):
    with h5py.File(api / "PixelClass3D.ilp", "r+") as f:
        damage(f)
    before = set(os.listdir(api))
    _assert_one_line_error(in_process(api), "PixelClass3D.ilp", *fragments)
    assert set(os.listdir(api)) == before


def test_a_damaged_project_is_one_line_from_the_command_line_too(api):
    _, damage, fragments = next(case for case in OPENING if case[0] == "a soft-link loop")
    with h5py.File(api / "PixelClass3D.ilp", "r+") as f:
        damage(f)
    _assert_one_line_error(headless(api), "PixelClass3D.ilp", *fragments)


@pytest.mark.parametrize("damage, fragments", [case[1:] for case in LABELS], ids=[case[0] for case in LABELS])
def test_crafted_labels_are_refused_before_training(api, in_process, damage, fragments):
    with h5py.File(api / "PixelClass3D.ilp", "r+") as f:
        damage(f)
    original = (api / "PixelClass3D.ilp").read_bytes()
    _assert_one_line_error(in_process(api, "--retrain", "--export_source", "Features"), "PixelClass3D.ilp", *fragments)
    assert (api / "PixelClass3D.ilp").read_bytes() == original, "the project was changed"


def test_a_scalar_column_count_is_read_as_its_value(api):
    with h5py.File(api / "PixelClass3D.ilp", "r+") as f:
        for name in f[CF]:
            if name.startswith("Forest"):
                replace(f, f"{CF}/{name}/_ext_param/column_count_", 11.0)
    result = headless(api)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
