"""Training from painted labels (the backend of issue 13's Training tab): strokes into 40^3 label blocks with
undo and redo, features recomputed only for the blocks a stroke touched, a forest trained from them, and
labels and forest saved into the project so that our reader and vigra load them."""

from __future__ import annotations

import os

import numpy as np
import pytest

from backend.compute.geometry import Roi
from backend.io.dataset import open_lane
from backend.io.project import open_project
from backend.io.project_pipeline import build_pipeline
from backend.io.project_writer import LaneLabels, Training, label_block, save_training
from backend.io.training import label_blocks
from backend.service.labels import LabelStore
from backend.service.live_training import TrainingSession
from ilastik_desktop.runtime.demo import write_demo_project
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

    saved = str(tmp_path / "elsewhere" / "saved.ilp")  # Save As into another folder
    os.makedirs(os.path.dirname(saved))
    blocks = [label_block(roi, labels, source.axes) for _, roi, labels in store.labelled()]
    names = project.label_names + ("Label 3",)
    colors = project.label_colors + ((230, 25, 75),)
    before = open(path, "rb").read()
    training = Training(project.features, names, colors, [LaneLabels(0, source.axes, blocks)], classifier, rows_after)
    save_training(path, training, saved)
    assert open(path, "rb").read() == before  # the original is left as it was
    reopened = open_project(saved)
    assert reopened.label_names == names and reopened.label_colors == colors == reopened.pmap_colors
    assert open_lane(reopened, 0).spatial_shape == source.spatial_shape  # its raw data found from there
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


def test_classes_are_added_renamed_recoloured_and_deleted_as_in_ilastik(demo):
    _, project, source = demo
    from backend.errors import UserError
    from backend.service.label_classes import ILASTIK_COLORS, add_class, delete_class, recolour_class, rename_class

    assert project.label_colors[:2] == ILASTIK_COLORS[:2]  # the demo uses ilastik's first two colours
    three = add_class(project)
    assert three.label_names[2] == "Label 3" and three.label_colors[2] == (230, 25, 75) == three.pmap_colors[2]
    renamed = rename_class(three, 3, "  Membrane ")
    assert renamed.label_names[2] == "Membrane"
    with pytest.raises(UserError, match="already called"):
        rename_class(renamed, 1, "Membrane")
    with pytest.raises(UserError, match="needs a name"):
        rename_class(renamed, 1, " ")
    assert recolour_class(renamed, 3, (1, 2, 3)).label_colors[2] == (1, 2, 3)
    two = delete_class(renamed, 2)
    assert two.label_names == (project.label_names[0], "Membrane")
    with pytest.raises(UserError, match="at least two"):
        delete_class(two, 1)

    store = LabelStore(source.spatial_shape)
    for label, x in ((1, 10), (2, 50), (3, 90)):
        store.stroke((0, 5, 0, 0), "y", "x", [(5, x)], radius=0, label=label)
    changed = store.remove_class(2)
    plane = store.region(Roi((0, 5, 5, 0), (1, 6, 6, 96)))[0, 0, 0]
    assert (plane[10], plane[50], plane[90]) == (1, 0, 2) and changed == {(0, 0, 0, 1), (0, 0, 0, 2)}
    assert store.undo() == set()  # the old numbers cannot come back


@pytest.mark.parametrize("engine", ["local", "zmq"])
def test_the_labelled_blocks_features_are_computed_on_the_workers(demo, engine):
    from backend.compute.pipeline import Pipeline
    from tests.contract.test_executor import EXECUTORS

    _, project, source = demo
    store = LabelStore.from_blocks(source.spatial_shape, label_blocks(project, source))
    features = build_pipeline(project, source.channels, True).features
    here_x, here_y = TrainingSession(source, features, store).samples()
    with EXECUTORS[engine](Pipeline(features, None, (), 0)) as executor:
        session = TrainingSession(source, features, store, executor)
        x, y = session.samples()
        assert np.array_equal(x, here_x) and np.array_equal(y, here_y)  # the same rows, computed elsewhere
        assert executor.status().done >= len(list(store.labelled())) == session.blocks_computed
        touched = store.stroke((0, 10, 0, 0), "y", "x", [(10, 10)], radius=4, label=1)
        session.touched(touched)
        done = executor.status().done
        session.samples()
        assert executor.status().done == done + len(touched)  # only the blocks the stroke touched
