"""Axes that do not fit say why: the wrong number of letters names both numbers, a letter used twice or
one that is no axis says that, wherever axes are checked (open_source, --input_axes, a project's axistags)."""

import json

import h5py
import numpy as np
import pytest

from backend.errors import DataError, ProjectError
from backend.io.checked import parse_axes
from backend.io.sources import open_source
from tests.conftest import run_cli
from tests.integration.test_cli_errors import _assert_one_line_error


@pytest.fixture
def volume(tmp_path):
    path = str(tmp_path / "v.npy")
    np.save(path, np.zeros((4, 5, 6), np.uint8))
    return path


@pytest.mark.parametrize("axes, says", [
    ("zyxc", "the image has 3 axes, 'zyxc' names 4 (one letter per axis)"),
    ("yx", "the image has 3 axes, 'yx' names 2 (one letter per axis)"),
    ("zyy", "'zyy' names y more than once (each of t, z, y, x, c at most once)"),
    ("zyq", "'zyq' names q, not one of t, z, y, x, c"),
])
def test_axes_that_do_not_fit_an_image_say_why(volume, axes, says):
    with pytest.raises(DataError) as error:
        open_source(volume, axes)
    assert str(error.value) == f"{volume}: axes '{axes}' do not fit: {says}"


def test_a_projects_axistags_with_a_repeated_axis(tmp_path):
    tags = json.dumps({"axes": [{"key": k} for k in "zyyx"]})
    with h5py.File(tmp_path / "p.h5", "w") as f:
        with pytest.raises(ProjectError, match="axistags: 'zyyx' names y more than once"):
            parse_axes(f, "axistags", tags)
        assert parse_axes(f, "axistags", json.dumps({"axes": [{"key": k} for k in "zyxc"]})) == "zyxc"


def test_input_axes_of_the_wrong_length_on_the_command_line(data_dir):
    raw = f"{data_dir}/seed/raw.h5/exported_data"
    result = run_cli("--headless", "--no-progress", "--project", f"{data_dir}/seed/pc.ilp", "--raw_data", raw,
                     "--input_axes", "zyxc", timeout=120)
    _assert_one_line_error(result, f"{raw}: axes 'zyxc' do not fit: the image has 2 axes, 'zyxc' names 4")
