"""The batch runner without Qt, on the in-memory services: files expanded from patterns, one output per
file named from its nickname, failures skipped, progress per file and overall, cancel."""

from __future__ import annotations

import os
import threading

import h5py
import numpy as np
import pytest
import tifffile

from backend.errors import UserError
from backend.io.project import open_project
from backend.io.project_pipeline import build_pipeline
from backend.service.export import ExportOptions
from ilastik_desktop.runtime.batch import (
    CANCELLED,
    FAILED,
    NOT_STARTED,
    WRITTEN,
    BatchRunner,
    expand_raw_data,
    nickname_of,
)
from tests.fakes import FakeServices
from tests.integration.test_executor import small_project

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small trained 3D project and its image."""
    folder = tmp_path_factory.mktemp("batch")
    path, image = small_project(str(folder))
    return open_project(path), image


@pytest.fixture
def services():
    services = FakeServices()
    yield services
    services.gateways.clear()  # the runner closed each file's gateway itself
    services.close()


def runner_for(project, services, out, **options) -> BatchRunner:
    def pipeline_for(source):
        return build_pipeline(project, source.channels, source.shape[1] > 1)

    export = ExportOptions(fmt="npy", filename_pattern=str(out / "{nickname}_{result_type}"), progress=False,
                           **options)
    return BatchRunner(services, project, export, pipeline_for)


class Heard:
    """Everything a psygnal signal emitted."""

    def __init__(self, signal):
        self.values: list = []
        signal.connect(lambda *args: self.values.append(args))


def test_nicknames_follow_ilastik():
    assert nickname_of("/data/cells_01.tif") == "cells_01"
    assert nickname_of("/data/raw.h5/volume/data") == "raw-volume-data"
    assert nickname_of("/data/stack/img_" + "0001.png" + os.pathsep + "/data/stack/img_0002.png") == "img_000"


def test_patterns_become_their_files_and_slices_of_a_volume_stay_one_stack(trained, tmp_path):
    project, image = trained
    for name in ("b.tif", "a.tif"):
        tifffile.imwrite(tmp_path / name, image[:4], photometric="minisblack")
    for name in ("s0.png", "s1.png"):
        tifffile.imwrite(tmp_path / name.replace(".png", ".tiff"), image[0])
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["data"] = image
    files = expand_raw_data([str(tmp_path / "*.tif"), str(tmp_path / "c*.h5/data"), str(tmp_path / "none*.tif"),
                             str(tmp_path / "s*.tiff")], project)
    assert files == [str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), str(tmp_path / "c.h5") + "/data",
                     str(tmp_path / "none*.tif"), str(tmp_path / "s*.tiff")]


def test_a_batch_writes_each_file_skips_a_corrupt_one_and_reports_progress(trained, services, tmp_path):
    project, image = trained
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "small.tif", image[:8, :40, :24], photometric="minisblack")
    (inputs / "corrupt.tif").write_bytes(b"II*\0" + b"\xff" * 64)
    np.save(inputs / "whole.npy", image)
    specs = [str(inputs / n) for n in ("small.tif", "corrupt.tif", "whole.npy")]
    out = tmp_path / "out" / "new"  # a missing folder is created
    runner = runner_for(project, services, out, block_shape=(1, 8, 32, 32))
    started, progress, finished = Heard(runner.file_started), Heard(runner.file_progress), Heard(runner.file_finished)
    summary = runner.run(specs)
    assert [o.status for o in summary.outcomes] == [WRITTEN, FAILED, WRITTEN]
    assert "corrupt.tif" in summary.outcomes[1].message and "\n" not in summary.outcomes[1].message
    assert summary.line.startswith("batch: 2 of 3 files written, 1 failed")
    assert sorted(os.listdir(out)) == ["small_Probabilities.npy", "whole_Probabilities.npy"]
    assert np.load(out / "small_Probabilities.npy").shape == (8, 40, 24, 2)
    assert np.load(out / "whole_Probabilities.npy").shape == image.shape + (2,)
    assert [i for i, _ in started.values] == [0, 1, 2] and [i for i, _ in finished.values] == [0, 1, 2]
    whole = [(done, total) for i, done, total in progress.values if i == 2]
    assert [done for done, _ in whole] == list(range(0, 13)) and {total for _, total in whole} == {12}  # 3x2x2


def test_the_same_name_twice_is_refused_for_the_second_file(trained, services, tmp_path):
    project, image = trained
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        np.save(tmp_path / folder / "cells.npy", image[:4])
    summary = runner_for(project, services, tmp_path / "out").run(
        [str(tmp_path / "one" / "cells.npy"), str(tmp_path / "two" / "cells.npy")])
    assert [o.status for o in summary.outcomes] == [WRITTEN, FAILED]
    assert "would overwrite the output of " + str(tmp_path / "one" / "cells.npy") in summary.outcomes[1].message


def test_a_pattern_no_file_could_be_written_with_is_refused_before_any_starts(trained, services, tmp_path):
    project, _ = trained
    with pytest.raises(UserError, match="unknown placeholder"):
        runner_for(project, services, tmp_path / "{name}")


def test_cancel_removes_the_partial_output_and_starts_no_other_file(trained, services, tmp_path):
    project, image = trained
    specs = []
    for name in ("first", "second", "third"):
        np.save(tmp_path / f"{name}.npy", image)
        specs.append(str(tmp_path / f"{name}.npy"))
    out = tmp_path / "out"
    runner = runner_for(project, services, out, block_shape=(1, 8, 32, 32))
    runner.file_progress.connect(lambda index, done, total: index == 1 and done == 3 and runner.cancel())
    summary = runner.run(specs)
    assert [o.status for o in summary.outcomes] == [WRITTEN, CANCELLED, NOT_STARTED]
    assert os.listdir(out) == ["first_Probabilities.npy"]  # no partial (hidden) file of the second
    assert "cancelled (2 not exported)" in summary.line


def test_raw_data_takes_several_files_and_the_window_refuses_them():
    from ilastik_desktop.cli.main import build_parser
    from ilastik_desktop.cli.options import project_and_raw_data, settings_from_args, window_raw_data

    args = build_parser().parse_args(["--raw_data", "a.tif", "b.h5/data", "--raw_data", "c.npy", "P.ilp"])
    assert project_and_raw_data(args) == ("P.ilp", ("a.tif", "b.h5/data", "c.npy"))  # the project, not a file
    assert settings_from_args(args).raw_data == ("a.tif", "b.h5/data", "c.npy")
    with pytest.raises(UserError, match="3 files given; the window opens one"):
        window_raw_data(args)
    assert window_raw_data(build_parser().parse_args(["P.ilp", "--raw_data", "a.tif"])) == "a.tif"


def test_an_unexpected_failure_ends_only_its_file(trained, services, tmp_path):
    project, image = trained
    for name in ("odd", "fine"):
        np.save(tmp_path / f"{name}.npy", image[:4])

    def pipeline_for(source):
        if "odd" in source.description:
            raise RuntimeError("the classifier broke")
        return build_pipeline(project, source.channels, source.shape[1] > 1)

    runner = BatchRunner(services, project, ExportOptions(fmt="npy", progress=False,
                                                          filename_pattern=str(tmp_path / "out" / "{nickname}")),
                         pipeline_for)
    summary = runner.run([str(tmp_path / "odd.npy"), str(tmp_path / "fine.npy")])
    assert [(o.status, o.message) for o in summary.outcomes][0] == (FAILED, "RuntimeError: the classifier broke")
    assert summary.outcomes[1].status == WRITTEN and os.listdir(tmp_path / "out") == ["fine.npy"]


def test_a_started_batch_expands_its_patterns_on_its_own_thread_and_lists_the_files_first(trained, services, tmp_path):
    project, image = trained
    for name in ("b.npy", "a.npy"):
        np.save(tmp_path / name, image[:4, :32, :32])
    out = tmp_path / "out"
    runner = runner_for(project, services, out)
    heard: list[tuple[str, object, str]] = []
    runner.files_listed.connect(lambda files: heard.append(("listed", files, threading.current_thread().name)))
    runner.file_started.connect(lambda index, spec: heard.append(("started", spec, threading.current_thread().name)))
    runner.start([str(tmp_path / "*.npy")], expand=True)
    assert runner.join(timeout=120)
    files = [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]
    assert heard == [("listed", files, "batch"), ("started", files[0], "batch"), ("started", files[1], "batch")]
    assert [o.status for o in runner.summary.outcomes] == [WRITTEN, WRITTEN]
    assert sorted(os.listdir(out)) == ["a_Probabilities.npy", "b_Probabilities.npy"]


def test_an_object_features_file_is_counted_in_frames_and_written_as_a_table(trained, services, tmp_path):
    project, image = trained
    np.save(tmp_path / "cells.npy", image[:8, :40, :24])
    runner = BatchRunner(services, project, ExportOptions(kind="Object Features", fmt="csv", progress=False,
                                                          filename_pattern=str(tmp_path / "{nickname}_{result_type}")),
                         lambda source: build_pipeline(project, source.channels, source.shape[1] > 1))
    outcome, = runner.run([str(tmp_path / "cells.npy")]).outcomes
    assert outcome.status == WRITTEN and outcome.paths == (str(tmp_path / "cells_Object_Features.csv"),)
    assert outcome.message.startswith(f"wrote {outcome.paths[0]} (1 frame, "), outcome.message
    assert open(outcome.paths[0]).readline().startswith("object_id,timestep,labelimage_oid,")
