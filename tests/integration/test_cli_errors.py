"""Every user mistake prints one clear line naming the file and exits 2, without a traceback."""

import os

import h5py
import numpy as np
import pytest

from tests.conftest import run_cli


def _assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_file(tmp_path):
    _assert_one_line_error(run_cli("--headless", "--project", str(tmp_path / "nope.ilp")), "nope.ilp", "no such file")


def test_directory(tmp_path):
    _assert_one_line_error(run_cli("--headless", "--project", str(tmp_path)), "not a file")


def test_not_hdf5(tmp_path):
    path = tmp_path / "text.ilp"
    path.write_text("hello")
    _assert_one_line_error(run_cli("--headless", "--project", str(path)), "text.ilp", "not an HDF5 file")


def test_truncated_project(tmp_path, data_dir):
    data = open(os.path.join(data_dir, "seed", "pc.ilp"), "rb").read()
    path = tmp_path / "cut.ilp"
    path.write_bytes(data[: len(data) // 3])
    _assert_one_line_error(run_cli("--headless", "--project", str(path)), "cut.ilp")


def test_hdf5_but_not_a_project(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    _assert_one_line_error(run_cli("--headless", "--project", str(path)), "not an ilastik project")


def test_unsupported_workflow(tmp_path):
    path = tmp_path / "auto.ilp"
    with h5py.File(path, "w") as f:
        f["workflowName"] = b"AutocontextTwoStage"
        f["ilastikVersion"] = b"1.3.3"
    _assert_one_line_error(run_cli("--headless", "--project", str(path)), "AutocontextTwoStage", "not supported")


def test_no_classifier(data_dir):
    project = os.path.join(data_dir, "ilastik-api", "PixelClassNoClassifier.ilp")
    png = os.path.join(data_dir, "ilastik-api", "Data_1channel.png")
    _assert_one_line_error(run_cli("--headless", "--project", project, "--raw_data", png), "no trained classifier")


def test_no_input_data(data_dir):
    project = os.path.join(data_dir, "ilastik-api", "PixelClassNoData.ilp")
    _assert_one_line_error(run_cli("--headless", "--project", project), "no input data")


def test_raw_data_missing_names_path_and_override(data_dir, copy_of):
    result = run_cli("--headless", "--project", copy_of(os.path.join(data_dir, "ilastik-api", "PixelClass.ilp")))
    _assert_one_line_error(result, "/Users/kutra/", "Data_1channel.png", "--raw_data")


def test_raw_data_moved_next_to_the_project_is_found_there(data_dir, copy_of, tmp_path):
    project = copy_of(os.path.join(data_dir, "ilastik-api", "PixelClass.ilp"))  # recorded: /Users/kutra/...
    copy_of(os.path.join(data_dir, "ilastik-api", "Data_1channel.png"))
    result = run_cli("--headless", "--no-progress", "--project", project, "--output_filename_format",
                     str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.h5").exists()


def test_raw_data_override_missing(data_dir, tmp_path):
    result = run_cli("--headless", "--project", os.path.join(data_dir, "seed", "pc.ilp"),
                     "--raw_data", str(tmp_path / "gone.h5/data"))
    _assert_one_line_error(result, "gone.h5", "no such file")


def test_feature_count_mismatch(data_dir, copy_of):
    project = copy_of(os.path.join(data_dir, "seed", "pc.ilp"))
    with h5py.File(project, "r+") as f:
        matrix = f["FeatureSelections/SelectionMatrix"][()]
        matrix[0, 6] = True
        f["FeatureSelections/SelectionMatrix"][...] = matrix
    result = run_cli("--headless", "--project", project, "--raw_data",
                     os.path.join(data_dir, "seed", "raw.h5/exported_data"))
    _assert_one_line_error(result, "expects 33 features", "gives 34")


def test_unsupported_forest_node(data_dir, copy_of):
    project = copy_of(os.path.join(data_dir, "seed", "pc.ilp"))
    with h5py.File(project, "r+") as f:
        topology = f["PixelClassification/ClassifierForests/Forest0000/Tree_00/topology"]
        data = topology[()]
        data[2] = 2  # hypersphere node at the root
        topology[...] = data
    _assert_one_line_error(run_cli("--headless", "--project", project), "node type 2", "not supported")


@pytest.mark.parametrize("args,fragment", [
    (["--cutout_subregion", "[(0,0),(5,)]"], "--cutout_subregion"),
    (["--cutout_subregion", "[(0,0),(500,500)]"], "outside the image"),
    (["--block_shape", "a,b"], "--block_shape"),
    (["--workers", "0"], "--workers"),
    (["--input_axes", "zyxc"], "do not fit"),
    (["--output_filename_format", "/nonexistent-dir/x"], "does not exist"),
    (["--output_filename_format", "{bogus}/x"], "unknown placeholder"),
])
def test_bad_options(data_dir, args, fragment):
    result = run_cli("--headless", "--project", os.path.join(data_dir, "seed", "pc.ilp"), "--raw_data",
                     os.path.join(data_dir, "seed", "raw.h5/exported_data"), "--no-progress", *args)
    _assert_one_line_error(result, fragment)


def test_window_mode_reports_a_bad_project_and_exits(tmp_path):
    env_before = os.environ.get("QT_QPA_PLATFORM")
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    try:
        result = run_cli("--screenshot", str(tmp_path / "shot.png"), str(tmp_path / "nope.ilp"), timeout=120)
    finally:
        if env_before is None:
            del os.environ["QT_QPA_PLATFORM"]
        else:
            os.environ["QT_QPA_PLATFORM"] = env_before
    assert result.returncode == 2, result.stderr
    assert "nope.ilp" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "shot.png").exists()


def test_both_programs_print_their_version():
    import subprocess
    import sys

    from ilastik_desktop import __version__
    from tests.conftest import REPO

    worker = subprocess.run([sys.executable, "-m", "ilastik_desktop.cli.worker", "--version"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert worker.returncode == 0 and worker.stdout.strip() == f"ilastik-worker {__version__}"
    app = run_cli("--version")
    assert app.returncode == 0 and app.stdout.strip() == f"ilastik-desktop {__version__}"


def test_shared_hdf5_with_remote_workers_is_refused_before_anything_starts(tmp_path):
    result = run_cli("--headless", "--project", str(tmp_path / "any.ilp"), "--shared-filesystem",
                     "--output_format", "hdf5", "--listen", "tcp://127.0.0.1:0")
    _assert_one_line_error(result, "writer process that only workers on this machine reach", "use --output_format zarr")


def test_batch_mode_options_without_headless_are_refused_not_ignored(tmp_path):
    for extra in (("--shared-filesystem",), ("--slab", "1/2")):
        result = run_cli("--project", str(tmp_path / "any.ilp"), *extra)
        _assert_one_line_error(result, "are for exports: add --headless")


def test_a_bad_option_on_a_first_start_is_still_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "no-kernels-yet"))  # nothing compiled or shipped fits
    _assert_one_line_error(run_cli("--headless", "--project", str(tmp_path / "any.ilp"), "--workers", "100000"),
                           "--workers 100000: this machine runs at most")
