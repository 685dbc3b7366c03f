"""Batch processing on the command line: ``--raw_data`` repeated and a glob pattern export each file to its
own output named from its nickname, the same arrays as one export per file; a corrupt file is reported in one
line and skipped, the others written, exit code 1 with a summary line."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import tifffile

from tests.conftest import run_cli
from tests.integration.test_executor import small_project
from tests.unit.test_lanes_writer import three_lanes

pytestmark = pytest.mark.timeout(300)

NICKNAMES = ("cells_a", "cells_b", "cells_c", "cells_d", "cells_e")  # the five good files, in batch order


def write_batch_inputs(folder, image: np.ndarray) -> list[str]:
    """Five images of different sizes cut from ``image`` (TIFF, HDF5, npy) and a corrupt TIFF in ``folder``;
    the specs of the five good ones, in their sorted order."""
    os.makedirs(folder, exist_ok=True)
    tifffile.imwrite(os.path.join(folder, "cells_a.tif"), image[:12, :40, :56], photometric="minisblack")
    tifffile.imwrite(os.path.join(folder, "cells_b.tif"), image[3:, 9:, 20:], photometric="minisblack")
    with h5py.File(os.path.join(folder, "cells_c.h5"), "w") as f:
        f["volume"] = image[:, :48, :]
    np.save(os.path.join(folder, "cells_d.npy"), np.ascontiguousarray(image[::-1, :, :33]))
    tifffile.imwrite(os.path.join(folder, "cells_e.tif"), image[5:20], photometric="minisblack")
    with open(os.path.join(folder, "cells_broken.tif"), "wb") as f:  # a TIFF header and then garbage
        f.write(b"II*\0" + b"\xff" * 200)
    return [os.path.join(folder, name) for name in
            ("cells_a.tif", "cells_b.tif", "cells_c.h5/volume", "cells_d.npy", "cells_e.tif")]


def output_name(nickname: str) -> str:
    """The output of an input with this nickname under the tests' pattern (HDF5's internal path joins it)."""
    return f"{nickname}-volume_Probabilities.npy" if nickname == "cells_c" else f"{nickname}_Probabilities.npy"


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A trained project and the batch's inputs: (project path, input folder, good specs)."""
    folder = tmp_path_factory.mktemp("batch")
    path, image = small_project(str(folder))
    inputs = str(folder / "inputs")
    return path, inputs, write_batch_inputs(inputs, image)


def export(project: str, out, *raw_data: str) -> tuple[int, list[str]]:
    """Run the headless batch with 2 workers into ``out``: (exit code, stderr lines)."""
    args = [a for spec in raw_data for a in ("--raw_data", spec)]
    result = run_cli("--headless", "--no-progress", "--project", project, "--workers", "2", "--output_format", "npy",
                     "--output_filename_format", os.path.join(str(out), "{nickname}_{result_type}"), *args,
                     timeout=240)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stderr.strip().splitlines()


def read_outputs(out) -> dict[str, np.ndarray]:
    """Every file of ``out`` (hidden ones too) by name."""
    return {name: np.load(os.path.join(out, name)) for name in sorted(os.listdir(out))}


def test_repeated_raw_data_and_a_glob_give_the_same_files_and_skip_the_corrupt_one(batch, tmp_path):
    project, inputs, specs = batch
    code, lines = export(project, tmp_path / "repeated", *specs[:2], os.path.join(inputs, "cells_broken.tif"),
                         *specs[2:])
    assert code == 1, lines
    assert len(lines) == 7, lines  # a line per file and the summary
    assert lines[2].startswith(f"[3/6] skipped {inputs}/cells_broken.tif: ") and "TIFF" in lines[2], lines
    for number, (line, spec) in enumerate(zip(lines[:2] + lines[3:6], specs)):
        assert line.startswith(f"[{number + 1 + (number >= 2)}/6] {spec}: wrote "), lines
    assert lines[-1].startswith("batch: 5 of 6 files written, 1 failed ("), lines
    repeated = read_outputs(tmp_path / "repeated")
    assert list(repeated) == [output_name(n) for n in NICKNAMES]

    code, lines = export(project, tmp_path / "glob", os.path.join(inputs, "cells_*.tif"),
                         os.path.join(inputs, "*.h5/volume"), os.path.join(inputs, "*.npy"))
    assert code == 1 and lines[-1].startswith("batch: 5 of 6 files written, 1 failed"), lines
    globbed = read_outputs(tmp_path / "glob")
    assert list(globbed) == list(repeated)
    for name, values in repeated.items():
        assert values.dtype == globbed[name].dtype and np.array_equal(values, globbed[name]), name


def test_each_batch_output_equals_the_export_of_that_file_alone(batch, tmp_path):
    project, _, specs = batch
    code, lines = export(project, tmp_path / "batch", specs[1], specs[2])
    assert code == 0 and lines[-1].startswith("batch: 2 of 2 files written ("), lines
    for spec, nickname in zip(specs[1:3], NICKNAMES[1:3]):
        (tmp_path / nickname).mkdir()  # a single export does not create its folder; a batch does
        code, lines = export(project, tmp_path / nickname, spec)
        assert code == 0, lines
        alone = np.load(tmp_path / nickname / output_name(nickname))
        assert np.array_equal(alone, np.load(tmp_path / "batch" / output_name(nickname)))
    assert alone.shape == (24, 48, 64, 2)


def test_a_batch_of_only_failing_files_says_how_many_failed(batch, tmp_path):
    project, inputs, _ = batch
    code, lines = export(project, tmp_path / "out", os.path.join(inputs, "cells_broken.tif"),
                         os.path.join(inputs, "missing.tif"))
    assert code == 1, lines
    assert lines[0].startswith(f"[1/2] skipped {inputs}/cells_broken.tif: "), lines
    assert lines[1].startswith(f"[2/2] skipped {inputs}/missing.tif: "), lines
    assert lines[-1].startswith("batch: 0 of 2 files written, 2 failed"), lines


def test_a_batch_retrained_with_any_lane_shown_learns_the_same_classifier(tmp_path):
    """``--retrain`` trains on every lane's labels, each lane's raw data where the project records it: the batch
    writes the same probabilities whichever ``--lane`` is given."""
    outputs = []
    for lane in ("0", "1"):
        folder = tmp_path / f"lane{lane}"
        folder.mkdir()
        project, _ = three_lanes(folder)
        out = folder / "out"
        result = run_cli("--headless", "--no-progress", "--project", project, "--workers", "1", "--retrain",
                         "--lane", lane, "--output_format", "npy", "--output_filename_format",
                         str(out / "{nickname}_{result_type}"), "--raw_data", str(folder / "second.h5/data"),
                         str(folder / "third.h5/data"), timeout=240)
        assert result.returncode == 0 and "retrained 100 trees" in result.stderr, result.stderr
        outputs.append(read_outputs(out))
    assert list(outputs[0]) == list(outputs[1]) == ["second-data_Probabilities.npy", "third-data_Probabilities.npy"]
    for name, values in outputs[0].items():
        assert np.array_equal(values, outputs[1][name]), name
