"""The label store's undo history is bounded."""

from backend.compute.geometry import Roi
from backend.service.labels import LabelStore


def test_the_undo_history_keeps_only_its_last_steps():
    """Every stroke kept a copy of the blocks it touched, forever (a soak run's memory grew with each)."""
    store = LabelStore((1, 40, 40, 40), undo_steps=3)
    for column in range(10):
        store.stroke((0, 20, 0, 0), "y", "x", [(20, column)], 0, 1)
    assert [bool(store.undo()) for _ in range(4)] == [True, True, True, False]
    assert store.region(Roi((0, 20, 20, 0), (1, 21, 21, 10))).ravel().tolist() == [1] * 7 + [0] * 3
    assert [bool(store.redo()) for _ in range(4)] == [True, True, True, False]
    assert store.region(Roi((0, 20, 20, 0), (1, 21, 21, 10))).ravel().tolist() == [1] * 10
