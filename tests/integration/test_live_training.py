"""Training from painted labels (the backend of issue 13's Training tab): strokes into 40^3 label blocks with
undo and redo, features recomputed only for the blocks a stroke touched, a forest trained from them, and
labels and forest saved into the project so that our reader and vigra load them."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from backend.compute.geometry import Roi
from backend.io.dataset import open_lane
from backend.io.project import open_project
from backend.io.project_pipeline import build_pipeline
from backend.io.project_writer import label_block, save_training
from backend.io.training import label_blocks
from backend.service.labels import LabelStore
from backend.service.live_training import TrainingSession
from ilastik_desktop.demo import write_demo_project
from tests.conftest import run_oracle

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("live")
    path = write_demo_project(str(folder / "demo"), shape=(48, 96, 96), trees=10)
    project = open_project(path)
    return path, project, open_lane(project, 0)


def test_strokes_undo_redo_and_the_blocks_they_touch(demo):
    _, project, source = demo
    store = LabelStore(source.spatial_shape)
    position = (0, 20, 50, 50)
    touched = store.stroke(position, "y", "x", [(30, 38), (30, 42)], radius=3, label=2)  # across x = 40
    assert touched == {(0, 0, 0, 0), (0, 0, 0, 1)}
    plane = store.region(Roi((0, 20, 0, 0), (1, 21, 96, 96)))[0, 0]
    assert plane[30, 38] == plane[30, 42] == plane[27, 38] == 2 and plane[26, 38] == 0 and plane[30, 46] == 0
    assert store.stroke(position, "y", "x", [(30, 38)], radius=1, label=0) == {(0, 0, 0, 0)}  # eraser
    assert store.region(Roi((0, 20, 30, 38), (1, 21, 31, 39))).item() == 0
    assert store.undo() == {(0, 0, 0, 0)} and store.region(Roi((0, 20, 30, 38), (1, 21, 31, 39))).item() == 2
    assert store.undo() == touched and not any(b.any() for b in store.blocks.values())
    assert store.redo() == touched and store.region(Roi((0, 20, 30, 42), (1, 21, 31, 43))).item() == 2
    assert store.stroke(position, "z", "x", [(20, 5)], radius=0, label=1) == {(0, 0, 1, 0)}  # in an xz view


def test_training_recomputes_only_touched_blocks_and_saves_what_vigra_loads(demo, tmp_path, vigra_python):
    path, project, source = demo
    store = LabelStore.from_blocks(source.spatial_shape, label_blocks(project, source))
    for roi, labels in label_blocks(project, source):  # the project's labels, as painted in ilastik
        assert np.array_equal(store.region(roi), labels[tuple(slice(0, s) for s in roi.shape)])
    pipeline = build_pipeline(project, source.channels, True)
    session = TrainingSession(source, pipeline.features, store)
    classifier, rows = session.train(trees=10)
    first = session.blocks_computed
    assert first == len(list(store.labelled())) > 0 and rows > 0
    touched = store.stroke((0, 10, 0, 0), "y", "x", [(10, 10)], radius=4, label=1)
    session.touched(touched)
    classifier, rows_after = session.train(trees=10)
    assert session.blocks_computed == first + len(touched) and rows_after > rows  # the rest came from the cache

    saved = str(tmp_path / "saved.ilp")
    shutil.copyfile(path, saved)
    blocks = [label_block(roi, labels, source.axes) for _, roi, labels in store.labelled()]
    save_training(saved, 0, source.axes, blocks, classifier, rows_after)
    reopened = open_project(saved)
    again = LabelStore.from_blocks(source.spatial_shape, label_blocks(reopened, source))
    whole = Roi.from_shape(source.spatial_shape)
    assert np.array_equal(again.region(whole), store.region(whole))
    assert reopened.classifier.tree_count == 10 and reopened.classifier.known_labels == classifier.known_labels

    x, _ = session.samples()
    features, predictions = tmp_path / "x.npy", tmp_path / "p.npy"
    np.save(features, x[:2000])
    run_oracle(vigra_python, "predict", saved, str(features), str(predictions))
    assert np.array_equal(reopened.classifier.compile().predict(x[:2000]), np.load(predictions))
    assert os.path.getsize(saved) > 0
