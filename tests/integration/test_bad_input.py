"""Input that used to hang, end in a traceback or destroy data: each is one clear line and exit code 2,
refused before any process starts, with nothing written."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tests.conftest import REPO, run_cli
from tests.integration.test_cli_errors import _assert_one_line_error


@pytest.fixture
def api(data_dir, tmp_path):
    """The shared 3D project and its raw data, copied so that outputs land in a private folder."""
    folder = os.path.join(data_dir, "ilastik-api")
    for name in ("PixelClass3D.ilp", "Data_3D.npy", "PixelClass.ilp"):
        shutil.copyfile(os.path.join(folder, name), tmp_path / name)
    return tmp_path


def headless(folder, *args, project="PixelClass3D.ilp", raw="Data_3D.npy"):
    raw_args = ["--raw_data", str(folder / raw)] if raw else []
    return run_cli("--headless", "--no-progress", "--project", str(folder / project), *raw_args, *args, timeout=120)


def assert_nothing_written(folder, before: set[str]) -> None:
    assert set(os.listdir(folder)) == before, "the refused export left files behind"


@pytest.mark.parametrize("dtype", ["complex64", "float16"])
def test_unsupported_pixel_types(api, dtype):
    np.save(api / "odd.npy", np.load(api / "Data_3D.npy").astype(dtype))
    before = set(os.listdir(api))
    _assert_one_line_error(headless(api, raw="odd.npy"), "odd.npy", f"pixel type {dtype} is not supported")
    assert_nothing_written(api, before)


def test_an_empty_npy_file(api):
    (api / "empty.npy").write_bytes(b"")
    _assert_one_line_error(headless(api, raw="empty.npy"), "empty.npy", "cannot read")


def test_a_2d_project_pointed_at_3d_data(api):
    _assert_one_line_error(headless(api, project="PixelClass.ilp"), "Data_3D.npy", "does not fit", "3D")


@pytest.mark.parametrize("args, fragment", [
    (["--output_filename_format", "/proc/ilastik-desktop-out"], "cannot write"),
    (["--output_internal_path", ""], "--output_internal_path"),
    (["--output_internal_path", "/"], "--output_internal_path"),
    (["--cutout_subregion", "[('a','b','c'),('d','e','f')]"], "--cutout_subregion"),
    (["--cutout_subregion", "[(0,0,0),(10.5,10,10)]"], "--cutout_subregion"),
    (["--export_source", "Objects", "--threshold", "channel=99"], "the project has 2 classes"),
    (["--export_source", "Objects", "--threshold", "method=hysteresis,core_channel=99"], "the project has 2 classes"),
    (["--export_source", "Objects", "--threshold", "sigmas=inf:1:1"], "--threshold 'sigmas=inf:1:1'"),
    (["--export_source", "Objects", "--threshold", "sigmas=1e9:1:1"], "--threshold 'sigmas=1e9:1:1'"),
    (["--export_source", "Objects", "--threshold", "min_size=50,max_size=10"], "max_size (10) is smaller"),
    (["--output_filename_format", "{nickname.__class__}"], "unknown placeholder"),
    (["--output_format", "npy", "--output_filename_format", "{dataset_dir}/out.h5"], "ends in .h5 but"),
    (["--listen", "tcp://*:70000"], "port from 0 to 65535"),
    (["--connect", "tcp://127.0.0.1:99999"], "port from 0 to 65535"),
])
def test_bad_options_are_refused_before_anything_starts(api, args, fragment):
    before = set(os.listdir(api))
    _assert_one_line_error(headless(api, *args), fragment)
    assert_nothing_written(api, before)


def test_the_export_refuses_to_overwrite_its_npy_input(api):
    original = (api / "Data_3D.npy").read_bytes()
    result = headless(api, "--output_format", "npy", "--output_filename_format", str(api / "Data_3D"))
    _assert_one_line_error(result, "would overwrite its own raw data")
    assert (api / "Data_3D.npy").read_bytes() == original


def test_the_export_refuses_to_overwrite_its_hdf5_input(api):
    with h5py.File(api / "raw.h5", "w") as f:
        f["data"] = np.load(api / "Data_3D.npy")[..., 0]
    original = (api / "raw.h5").read_bytes()
    result = headless(api, "--output_filename_format", str(api / "raw"), raw="raw.h5/data")
    _assert_one_line_error(result, "would overwrite its own raw data")
    assert (api / "raw.h5").read_bytes() == original


@pytest.mark.parametrize("extra", [[], ["--print-key"]])
def test_a_config_dir_that_is_a_file(api, extra):
    (api / "config").write_text("not a folder")
    args = ["--print-key"] if extra else ["--listen", "tcp://127.0.0.1:0"]
    result = run_cli("--headless", "--project", str(api / "PixelClass3D.ilp"), "--raw_data", str(api / "Data_3D.npy"),
                     "--config-dir", str(api / "config"), *args, timeout=120)
    _assert_one_line_error(result, "config", "is a file")


def test_a_world_readable_secret_key_is_refused(api):
    config = api / "config"
    assert run_cli("--print-key", "--config-dir", str(config)).returncode == 0
    secret = config / "keys" / "gateway.key_secret"
    os.chmod(secret, 0o644)
    _assert_one_line_error(run_cli("--print-key", "--config-dir", str(config)), "gateway.key_secret", "chmod 600")


def test_without_a_display_the_window_is_refused_with_a_hint(api):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run([sys.executable, "-m", "ilastik_desktop", str(api / "PixelClass3D.ilp")], env=env,
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    _assert_one_line_error(result, "no display found: use --headless")


def test_missing_x11_libraries_are_named_with_their_packages(api):
    from ilastik_desktop._qt.display import debian_packages, missing_libraries, xcb_plugin

    missing = missing_libraries(xcb_plugin())
    if not missing:
        pytest.skip("this machine has every library Qt's X11 plugin needs")
    env = {k: v for k, v in os.environ.items() if k not in ("WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["DISPLAY"] = ":97"
    result = subprocess.run([sys.executable, "-m", "ilastik_desktop", str(api / "PixelClass3D.ilp")], env=env,
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    _assert_one_line_error(result, missing[0], "apt-get install " + " ".join(debian_packages(missing)))


def test_debian_package_names_follow_the_sonames():
    from ilastik_desktop._qt.display import debian_packages

    assert debian_packages(["libxcb-icccm.so.4", "libxkbcommon-x11.so.0", "libGL.so.1", "libX11-xcb.so.1",
                            "libdbus-1.so.3", "libglib-2.0.so.0"]) == [
        "libxcb-icccm4", "libxkbcommon-x11-0", "libgl1", "libx11-xcb1", "libdbus-1-3", "libglib2.0-0"]


def test_retrain_keeps_the_project_files_permissions(api):
    project = api / "PixelClass3D.ilp"
    os.chmod(project, 0o640)
    result = headless(api, "--retrain", "--output_format", "npy")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(os.stat(project).st_mode) == 0o640


def _forest_count(path) -> int:
    with h5py.File(path, "r") as f:
        return sum(name.startswith("Forest") for name in f["PixelClassification/ClassifierForests"])


@pytest.fixture
def read_only(api):
    """The project made read-only: immutable for root (whom permissions do not stop), else mode 0444."""
    project = api / "PixelClass3D.ilp"
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(project)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not possible here (root ignores a read-only mode)")
        yield project
        subprocess.run(["chattr", "-i", str(project)], check=True)
    else:
        os.chmod(project, 0o444)
        yield project


def test_retraining_a_read_only_project_is_refused_before_training(api, read_only):
    original = read_only.read_bytes()
    before = set(os.listdir(api))
    _assert_one_line_error(headless(api, "--retrain", "--output_format", "npy"), "PixelClass3D.ilp", "read-only")
    assert read_only.read_bytes() == original
    assert_nothing_written(api, before)


def _limit_file_size(limit: int):
    """For a child process: writing a file beyond ``limit`` bytes fails (EFBIG), as on a full disk."""
    def apply() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_failed_save_of_the_retrained_classifier_is_one_line_and_leaves_the_project_intact(api):
    project = api / "PixelClass3D.ilp"
    original = project.read_bytes()
    before = set(os.listdir(api))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "ilastik_desktop", "--headless", "--no-progress", "--retrain",
                             "--project", str(project), "--raw_data", str(api / "Data_3D.npy"), "--output_format",
                             "npy"], capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
                            preexec_fn=_limit_file_size(len(original) // 2))
    _assert_one_line_error(result, "PixelClass3D.ilp", "could not save the project", "the file is unchanged")
    assert project.read_bytes() == original
    assert_nothing_written(api, before)


_GROWING_SAVE = """
import sys
import numpy as np
from backend.io import project_writer
project_writer.write_classifier = lambda pc, *args: pc.create_dataset("grown", data=np.arange(1 << 20))
try:
    project_writer.replace_classifier(sys.argv[1], None, 0)
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_a_disk_filling_up_while_the_project_is_written_is_a_clear_error(api):
    project = api / "PixelClass3D.ilp"
    original = project.read_bytes()
    before = set(os.listdir(api))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", _GROWING_SAVE, str(project)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=60,
                            preexec_fn=_limit_file_size(len(original) + 65536))
    assert result.stdout.startswith("ProjectError ") and "the file is unchanged" in result.stdout, result.stdout
    assert project.read_bytes() == original
    assert_nothing_written(api, before)


_KILLED_WHILE_SAVING = """
import os, signal, sys
from backend.io import project_writer
project_writer.write_classifier = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
project_writer.replace_classifier(sys.argv[1], None, 0)
"""


def test_a_save_killed_midway_leaves_the_project_intact_and_its_copy_is_removed_by_the_next_run(api):
    project = api / "PixelClass3D.ilp"
    original = project.read_bytes()
    before = set(os.listdir(api))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    killed = subprocess.run([sys.executable, "-c", _KILLED_WHILE_SAVING, str(project)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert killed.returncode == -9, killed.stderr
    assert project.read_bytes() == original
    assert len(set(os.listdir(api)) - before) == 1, "the killed save left no copy: nothing was tested"
    result = headless(api, "--retrain", "--output_format", "npy")
    assert result.returncode == 0, result.stderr
    assert set(os.listdir(api)) == before | {"Data_3D_Probabilities.npy"}
    assert _forest_count(project) == 2


def test_retraining_through_a_link_saves_into_the_linked_project(api, tmp_path):
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "linked.ilp"
    os.symlink(api / "PixelClass3D.ilp", link)
    assert _forest_count(api / "PixelClass3D.ilp") == 10
    result = run_cli("--headless", "--no-progress", "--retrain", "--project", str(link), "--raw_data",
                     str(api / "Data_3D.npy"), "--output_format", "npy", "--output_filename_format",
                     str(tmp_path / "out"), timeout=120)
    assert result.returncode == 0, result.stderr
    assert os.path.islink(link) and os.listdir(tmp_path / "links") == ["linked.ilp"]
    assert _forest_count(api / "PixelClass3D.ilp") == 2
