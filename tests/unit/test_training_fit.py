"""Fitting the classifier in chunks of trees (so that an outdated training can stop) and loading the trainer
without long garbage collections."""

import subprocess
import sys

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from backend.io.forest_io import forest_from_sklearn
from backend.io.training import TrainingStopped, train_classifier


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(600, 11)).astype(np.float32)
    y = np.where(x[:, 0] + 0.5 * rng.normal(size=600) > 0, 1, 2).astype(np.int64)
    y[::9] = 3
    return x, y


def all_at_once(x, y, trees: int, forests: int) -> list:
    """The forests as one fit of each (what training did before it grew trees in chunks)."""
    per = [trees // forests + (1 if i < trees % forests else 0) for i in range(forests)]
    return [forest_from_sklearn(RandomForestClassifier(n_estimators=n, max_features="sqrt", random_state=i,
                                                       n_jobs=-1).fit(x, y), x.shape[1]) for i, n in enumerate(per)]


@pytest.mark.parametrize("chunk", [None, 1, 7, 10, 50])
def test_trees_grown_in_chunks_are_the_trees_grown_at_once(samples, chunk):
    x, y = samples
    classifier = train_classifier(x, y, [f"f{i}" for i in range(11)], trees=23, forests=2, chunk_trees=chunk)
    expected = all_at_once(x, y, 23, 2)
    assert [len(f.trees) for f in classifier.forests] == [12, 11]
    for forest, reference in zip(classifier.forests, expected):
        assert forest.labels == reference.labels == (1, 2, 3)
        for tree, other in zip(forest.trees, reference.trees, strict=True):
            assert np.array_equal(tree.topology, other.topology)
            assert np.array_equal(tree.parameters, other.parameters)


def test_a_training_asked_to_stop_stops_between_chunks(samples):
    x, y = samples
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > 2  # after two chunks of the first forest

    with pytest.raises(TrainingStopped):
        train_classifier(x, y, [f"f{i}" for i in range(11)], trees=40, forests=2, chunk_trees=5,
                         should_stop=should_stop)
    assert len(asked) == 3


def test_a_training_past_half_its_trees_ends_however_outdated(samples):
    """Labels changing faster than trainings take (a stroke a second) still get a result shown."""
    x, y = samples
    asked: list[int] = []

    def outdated() -> bool:
        asked.append(1)
        return len(asked) > 4  # outdated once the first forest (20 of 40 trees) is grown

    classifier = train_classifier(x, y, [f"f{i}" for i in range(11)], trees=40, forests=2, chunk_trees=5,
                                  should_stop=outdated)
    assert len(asked) == 4 and len(classifier.forests) == 2  # not asked again past half: it ended


def test_loading_the_trainer_keeps_what_the_process_holds_out_of_garbage_collections():
    code = ("import gc, time, weakref\n"
            "from backend.io.training import collect_frozen_garbage, load_trainer\n"
            "class Project:\n"
            "    pass\n"
            "gc.disable()  # (as if no collection came before the trainer was loaded)\n"
            "closed = Project()\n"
            "closed.me = closed  # garbage in a cycle\n"
            "closed = weakref.ref(closed)\n"
            "load_trainer()\n"
            "frozen = gc.get_freeze_count()\n"
            "def collect():\n"
            "    started = time.perf_counter()\n"
            "    gc.collect()\n"
            "    return time.perf_counter() - started\n"
            "skipping = collect()\n"
            "kept = closed() is not None\n"
            "collect_frozen_garbage()  # the project closed\n"
            "gc.unfreeze()\n"
            "print(frozen, skipping, collect(), kept, closed() is None)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    frozen, skipping, everything, kept, collected = out.stdout.split()
    assert int(frozen) > 100_000, out.stdout  # the modules imported so far
    assert float(skipping) < float(everything) / 2, out.stdout  # a full collection skips them
    assert kept == "True" and collected == "True", out.stdout  # until a closed project's garbage is collected
