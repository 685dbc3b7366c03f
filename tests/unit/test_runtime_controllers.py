"""The window's controllers without Qt: training, opening and serving, on the in-memory services."""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import pytest

from backend.compute.geometry import Roi
from backend.compute.threshold import ThresholdSettings
from backend.config import TrainingConfig
from backend.errors import RawDataMissing
from backend.io.project import open_project
from backend.web.server import WebSettings
from ilastik_desktop.runtime.document import open_document
from ilastik_desktop.runtime.opening import ProjectOpener, located_raw_data
from ilastik_desktop.runtime.serving import ServeController, zarr_url
from ilastik_desktop.runtime.training import TrainingController
from tests.fakes import MemoryPreferences
from tests.helpers import wait_for
from tests.integration.webserver import http_get

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def seed(data_dir, tmp_path):
    """A writable copy of the shared seed project with its raw data beside it under the name it records."""
    shutil.copy(os.path.join(data_dir, "seed", "pc.ilp"), tmp_path / "pc.ilp")
    shutil.copy(os.path.join(data_dir, "seed", "raw.h5"), tmp_path / "raw.h5")
    return str(tmp_path / "pc.ilp"), str(tmp_path / "raw.h5") + "/exported_data"


class Heard:
    """Everything a psygnal signal emitted."""

    def __init__(self, signal):
        self.values: list = []
        signal.connect(lambda *args: self.values.append(args[0] if len(args) == 1 else args))


# -- training --------------------------------------------------------------------------------------------------
@pytest.fixture
def trainer(seed, services):
    path, raw = seed
    document = open_document(path, services, raw)
    controller = TrainingController(document, services.executor, TrainingConfig())
    yield controller
    controller.close()


def paint(controller: TrainingController, label: int, row: int) -> None:
    controller.stroke((0, 0, 0, 0), "y", "x", [(row, 20), (row, 60), (row, 100)], 3, label)


def test_strokes_ask_for_training_only_while_live(trainer):
    wanted = Heard(trainer.training_wanted)
    row = Roi((0, 0, 90, 0), (1, 1, 91, 185))
    before = trainer.store.region(row)
    paint(trainer, 1, 30)
    assert trainer.dirty and len(wanted.values) == 1
    trainer.live = False
    paint(trainer, 2, 90)
    assert len(wanted.values) == 1 and not np.array_equal(trainer.store.region(row), before)
    trainer.undo()
    assert np.array_equal(trainer.store.region(row), before)


def test_training_gives_the_gateway_a_classifier_the_labels_agree_with(trainer):
    trained, renewed = Heard(trainer.trained), Heard(trainer.pipeline_changed)
    before = trainer.document.gateway.pipeline_fingerprint
    paint(trainer, 1, 30)
    paint(trainer, 2, 150)
    assert trainer.train()
    wait_for(lambda: trained.values, 120)
    assert trained.values[-1].startswith("trained 100 trees on") and len(renewed.values) == 1
    gateway = trainer.document.gateway
    assert gateway.pipeline_fingerprint != before and trainer.classifier is not None
    roi = Roi((0, 0, 28, 20), (1, 1, 32, 100))
    probabilities = gateway.request("Probabilities", roi).result(60)
    assert probabilities[..., 0].mean() > 0.5  # painted as class 1 there


def test_strokes_during_a_training_replace_it_with_one_from_every_label(trainer):
    trained = Heard(trainer.trained)
    paint(trainer, 1, 30)
    paint(trainer, 2, 150)
    assert trainer.train()
    first = trainer._training
    paint(trainer, 2, 90)  # while the first training runs: it is outdated
    assert trainer.train()
    wait_for(lambda: trained.values, 120)
    trainer.pool.submit(lambda: None).result(60)  # nothing more to come from the training thread
    assert first.done() and first.exception() is None
    labelled = int((trainer.store.region(Roi.from_shape(trainer.document.source.spatial_shape)) > 0).sum())
    assert trained.values == [trained.values[0]] and f"on {labelled} labelled voxels" in trained.values[0]
    assert trainer.rows == labelled


def test_a_new_classifier_reaches_the_workers_from_the_training_thread(seed, services):
    """Registering a pipeline is a network call with Dask: never on the owner's (GUI) thread."""
    path, raw = seed
    document = open_document(path, services, raw)
    owner_calls: list = []
    controller = TrainingController(document, services.executor, TrainingConfig(),
                                    call_soon=lambda function, *args: owner_calls.append((function, args)))
    registered: list[tuple[str, str]] = []
    add = services.executor.add_pipeline
    services.executor.add_pipeline = lambda p: registered.append((p.fingerprint(), threading.current_thread().name)) \
        or add(p)
    try:
        paint(controller, 1, 30)
        paint(controller, 2, 150)
        controller.train()
        wait_for(lambda: owner_calls, 120)  # the training handed its result over
        for function, args in owner_calls:  # the owner's thread: here
            function(*args)
        new = document.gateway.pipeline_fingerprint
        assert next(thread for fingerprint, thread in registered if fingerprint == new).startswith("training")
    finally:
        controller.close()


def test_classes_are_added_renamed_refused_and_deleted_with_their_labels(trainer):
    changed, messages = Heard(trainer.classes_changed), Heard(trainer.message)
    trainer.add_class()
    assert trainer.names == ["Label 1", "Label 2", "Label 3"] and trainer.document.pipeline.label_count == 3
    trainer.rename_class(3, "Label 1")
    assert "Label 1" in messages.values[-1] and trainer.names[2] == "Label 3"  # a duplicate is refused
    trainer.rename_class(3, "nuclei")
    paint(trainer, 3, 60)
    trainer.delete_class(2)
    assert trainer.names == ["Label 1", "nuclei"] and len(changed.values) == 3
    assert trainer.store.region(Roi((0, 0, 58, 20), (1, 1, 62, 100))).max() == 2  # renumbered


def test_save_as_writes_a_copy_that_becomes_the_project(trainer, tmp_path):
    renamed, saved = Heard(trainer.renamed), Heard(trainer.saved)
    original = trainer.document.project.path
    before = open(original, "rb").read()
    paint(trainer, 1, 30)
    copy = str(tmp_path / "copy.ilp")
    trainer.save(ThresholdSettings(), copy).result(60)
    assert saved.values == [f"saved {copy}"] and renamed.values == [original]
    assert trainer.document.project.path == copy and not trainer.dirty
    assert open(original, "rb").read() == before
    assert open_project(copy).label_names == ("Label 1", "Label 2")


def test_a_training_finishing_after_close_is_dropped(trainer):
    trained = Heard(trainer.trained)
    paint(trainer, 1, 30)
    paint(trainer, 2, 150)
    before = trainer.document.gateway.pipeline_fingerprint
    trainer.train()
    trainer.close()
    assert trained.values == [] and trainer.document.gateway.pipeline_fingerprint == before


# -- opening ---------------------------------------------------------------------------------------------------
@pytest.fixture
def opener(services):
    opener = ProjectOpener(services, MemoryPreferences())
    yield opener
    opener.close()


def outcome(opener: ProjectOpener, *args):
    """Open ``args`` and wait for what comes of it."""
    heard = {name: Heard(getattr(opener, name)) for name in ("opened", "raw_missing", "failed")}
    opener.open(*args)
    wait_for(lambda: any(h.values for h in heard.values()), timeout=60)
    return {name: h.values for name, h in heard.items() if h.values}


def test_opening_missing_raw_data_asks_for_it_and_remembers_what_the_user_located(opener, seed):
    path, raw = seed
    os.rename(raw.split(".h5")[0] + ".h5", os.path.join(os.path.dirname(path), "moved.h5"))
    heard = {name: Heard(getattr(opener, name)) for name in ("opened", "raw_missing", "failed")}
    opener.open(path)
    wait_for(lambda: heard["raw_missing"].values, timeout=60)
    project, error = heard["raw_missing"].values[0]
    assert project == path and isinstance(error, RawDataMissing)
    located = located_raw_data(RawDataMissing("", "raw.h5/exported_data"), os.path.join(os.path.dirname(path),
                                                                                         "moved.h5"))
    opener.open(path, located, remember=True)
    wait_for(lambda: heard["opened"].values, timeout=60)
    assert opener.remembered(path) == located and opener.recent() == [path]


def test_remembered_raw_data_that_no_longer_opens_is_forgotten_with_a_message(opener, seed, tmp_path):
    path, _ = seed
    opener.preferences.setValue("raw_data/" + path, str(tmp_path / "gone.h5/exported_data"))
    result = outcome(opener, path)
    assert "was forgotten" in result["failed"][0] and opener.remembered(path) is None


def test_a_broken_project_fails_with_a_message(opener, tmp_path):
    broken = tmp_path / "broken.ilp"
    broken.write_bytes(b"not hdf5")
    result = outcome(opener, str(broken))
    assert str(broken) in result["failed"][0] and opener.recent() == []


def test_save_as_moves_recent_files_and_remembered_raw_data(opener):
    opener.preferences.setValue("raw_data//a.ilp", "/data/raw.h5")
    opener.add_recent("/a.ilp")
    opener.moved("/a.ilp", "/b.ilp")
    assert opener.recent() == ["/b.ilp", "/a.ilp"] and opener.remembered("/b.ilp") == "/data/raw.h5"


# -- serving ---------------------------------------------------------------------------------------------------
def test_serving_starts_shares_the_document_and_stops(seed, services):
    path, raw = seed
    document = open_document(path, services, raw)
    controller = ServeController(services)
    started, stopped, failed = Heard(controller.started), Heard(controller.stopped), Heard(controller.failed)
    controller.set_document(document)
    assert not controller.start(WebSettings(host="127.0.0.1", port=0, token="short"))
    assert failed.values == ["The token must have at least 8 characters."]
    assert controller.start(WebSettings(host="127.0.0.1", port=0))
    server = wait_for(lambda: started.values and started.values[0], timeout=60)
    assert zarr_url(server).endswith("/zarr/0/probabilities") and not controller.can_start()
    status, body, _ = http_get(zarr_url(server) + "/0/.zarray")
    assert status == 200 and b"zarr_format" in body
    controller.set_document(None)  # the project closed: serving stops
    assert stopped.values == ["stopped: the project was closed"]
    wait_for(lambda: not controller.busy, timeout=30)
    controller.shutdown()
    assert np.isfinite(server.service.lanes[0].gateway.status().gateway_s)
