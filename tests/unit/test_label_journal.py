"""The label journal: what is recorded reads back, a torn last record is ignored, a journal of another saved
state is told apart, a save keeps only what came after it started, class edits, the fallback folder and
fsync at most every ``sync_interval_s``."""

import os
import threading
import time

import numpy as np
import pytest

from backend.io import label_journal
from backend.io.label_journal import LabelJournal
from backend.io.label_journal_format import find_journal, journal_paths, read_journal

SHAPE = (1, 40, 40, 40)


@pytest.fixture
def project(tmp_path):
    path = tmp_path / "p.ilp"
    path.write_bytes(b"saved state 1")
    return str(path)


@pytest.fixture
def fallback(tmp_path):
    return str(tmp_path / "config")


def labels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, SHAPE, dtype=np.uint8)


def written(journal: LabelJournal) -> None:
    assert journal.wait_written(10)


def test_blocks_and_classes_read_back_as_recorded(project, fallback):
    messages = []
    journal = LabelJournal(project, fallback, 0.05, messages.append)
    first, second = labels(1), labels(2)
    journal.record_blocks(0, {(0, 0, 0, 0): first, (0, 1, 0, 0): second})
    first[:] = 0  # the journal holds a copy: later strokes change the store's arrays in place
    journal.record_classes(["a", "b", "c"], [(1, 2, 3), (4, 5, 6), (7, 8, 9)])
    journal.record_blocks(0, {(0, 1, 0, 0): None})  # erased
    journal.record_blocks(1, {(0, 0, 0, 1): labels(3)})  # another lane
    written(journal)
    found = find_journal(project, fallback)
    assert found.path == project + ".journal" and found.records == 5 and found.torn_bytes == 0
    assert found.belongs_to(project)
    assert np.array_equal(found.blocks[(0, (0, 0, 0, 0))], labels(1))
    assert found.lane_blocks(0) == {(0, 0, 0, 0): found.blocks[(0, (0, 0, 0, 0))], (0, 1, 0, 0): None}
    assert np.array_equal(found.lane_blocks(1)[(0, 0, 0, 1)], labels(3))
    assert found.classes == (["a", "b", "c"], [(1, 2, 3), (4, 5, 6), (7, 8, 9)])
    journal.close()
    assert messages == []


def test_a_torn_last_record_is_ignored_and_the_earlier_ones_kept(project, fallback):
    journal = LabelJournal(project, fallback)
    journal.record_blocks(0, {(0, 0, 0, 0): labels(1)})
    journal.record_blocks(0, {(0, 0, 0, 1): labels(2)})
    journal.close()
    path = project + ".journal"
    whole = os.path.getsize(path)
    with open(path, "r+b") as f:  # a kill during the second record's write
        f.truncate(whole - 100)
    found = read_journal(path)
    assert found.records == 1 and found.torn_bytes > 0 and list(found.blocks) == [(0, (0, 0, 0, 0))]
    with open(path, "r+b") as f:  # or a last record whose bytes are not those written
        f.truncate(whole)
        f.seek(whole - 10)
        f.write(b"\xff" * 10)
    found = read_journal(path)
    assert found.records == 1 and np.array_equal(found.blocks[(0, (0, 0, 0, 0))], labels(1))
    with open(path, "r+b") as f:  # torn within the header: no journal
        f.truncate(40)
    assert read_journal(path) is None and find_journal(project, fallback) is None


def test_a_journal_of_another_saved_state_is_told_apart(project, fallback):
    journal = LabelJournal(project, fallback)
    journal.record_blocks(0, {(0, 0, 0, 0): labels(1)})
    journal.close()
    assert find_journal(project, fallback).belongs_to(project)
    with open(project, "ab") as f:  # saved elsewhere meanwhile
        f.write(b" and more")
    assert not find_journal(project, fallback).belongs_to(project)


def test_a_save_keeps_only_what_was_recorded_after_it_started(project, fallback):
    journal = LabelJournal(project, fallback)
    journal.record_blocks(0, {(0, 0, 0, 0): labels(1)})
    token = journal.saving()
    journal.record_blocks(0, {(0, 0, 0, 1): labels(2)})  # painted while the save runs
    written(journal)
    with open(project, "wb") as f:
        f.write(b"saved state 2, another size")
    journal.saved(token)
    written(journal)
    found = find_journal(project, fallback)
    assert list(found.blocks) == [(0, (0, 0, 0, 1))] and found.belongs_to(project)
    journal.record_blocks(0, {(0, 0, 0, 2): labels(3)})  # appended after the kept record
    token = journal.saving()
    written(journal)
    assert set(read_journal(found.path).blocks) == {(0, (0, 0, 0, 1)), (0, (0, 0, 0, 2))}
    journal.saved(token)
    written(journal)
    assert not os.path.exists(project + ".journal")  # nothing after the save: no journal
    journal.close()


def test_save_as_moves_the_journal_and_clear_removes_it(project, fallback, tmp_path):
    journal = LabelJournal(project, fallback)
    token = journal.saving()
    journal.record_blocks(0, {(0, 0, 0, 1): labels(2)})
    copy = tmp_path / "copy.ilp"
    copy.write_bytes(b"the copy")
    journal.saved(token, str(copy))
    written(journal)
    assert not os.path.exists(project + ".journal")
    assert find_journal(str(copy), fallback).belongs_to(str(copy))
    journal.clear()
    written(journal)
    assert find_journal(str(copy), fallback) is None and not os.path.exists(str(copy) + ".journal")
    journal.close()


def test_class_edits_are_recorded_the_last_one_counts(project, fallback):
    journal = LabelJournal(project, fallback)
    journal.record_classes(["Label 1", "Label 2"], [(255, 0, 0), (0, 255, 0)])
    journal.record_classes(["Label 1", "Label 2", "Label 3"], [(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    journal.record_classes(["nuclei", "Label 2", "Label 3"], [(255, 0, 0), (0, 255, 0), (9, 9, 9)])
    journal.close()
    assert find_journal(project, fallback).classes == (["nuclei", "Label 2", "Label 3"],
                                                       [(255, 0, 0), (0, 255, 0), (9, 9, 9)])


def test_an_unwritable_project_folder_journals_in_the_config_folder_and_says_so(project, fallback):
    os.mkdir(project + ".journal")  # the journal cannot be created beside the project (tests run as root)
    messages = []
    journal = LabelJournal(project, fallback, report=messages.append)
    journal.record_blocks(0, {(0, 0, 0, 0): labels(1)})
    written(journal)
    inside = journal_paths(project, fallback)[1]
    assert journal.path == inside and inside.startswith(fallback)
    assert len(messages) == 1 and "is not writable" in messages[0] and inside in messages[0]
    found = find_journal(project, fallback)
    assert found.path == inside and np.array_equal(found.blocks[(0, (0, 0, 0, 0))], labels(1))
    os.rmdir(project + ".journal")
    restoring = LabelJournal(project, fallback)  # taken over by the next session: rewritten beside the project
    restoring.restored(found)
    restoring.close()
    assert not os.path.exists(inside)
    assert np.array_equal(find_journal(project, fallback).blocks[(0, (0, 0, 0, 0))], labels(1))
    journal.close()


def test_a_folder_marked_read_only_is_not_written_into_even_by_root(project, fallback):
    folder = os.path.dirname(project)
    os.chmod(folder, 0o555)  # as the shared test data is: root could still write there
    try:
        messages = []
        journal = LabelJournal(project, fallback, report=messages.append)
        journal.record_blocks(0, {(0, 0, 0, 0): labels(1)})
        written(journal)
        journal.close()
        assert journal.path.startswith(fallback) and not os.path.exists(project + ".journal")
        assert "the folder is read-only" in messages[0]
    finally:
        os.chmod(folder, 0o755)


def test_records_are_appended_at_once_and_synced_at_most_every_interval(project, fallback, monkeypatch):
    syncs = []
    real = os.fsync
    monkeypatch.setattr(label_journal.os, "fsync", lambda fd: syncs.append((time.monotonic(), threading.
                                                                             current_thread().name)) or real(fd))
    journal = LabelJournal(project, fallback, sync_interval_s=0.3)
    journal.record_blocks(0, {(0, 0, 0, 0): labels(0)})
    written(journal)
    syncs.clear()  # the file's creation syncs once
    started = time.monotonic()
    for i in range(40):
        journal.record_blocks(0, {(0, 0, 0, 0): labels(i)})
        written(journal)
        assert read_journal(project + ".journal").records == i + 2  # in the file at once, not batched
    elapsed = time.monotonic() - started
    journal.close()
    assert all(name == "label-journal" for _, name in syncs)  # never on the owner's thread
    assert 1 <= len(syncs) <= elapsed / 0.3 + 2, (len(syncs), elapsed)
    gaps = np.diff([t for t, _ in syncs[:-1]])  # the last is the close's
    assert (gaps >= 0.29).all(), gaps


def test_an_earlier_journal_neither_restored_nor_discarded_is_set_aside_not_overwritten(project, fallback):
    earlier = LabelJournal(project, fallback)
    earlier.record_blocks(0, {(0, 0, 0, 0): labels(1)})
    earlier.close()
    messages = []
    journal = LabelJournal(project, fallback, report=messages.append)
    journal.record_blocks(0, {(0, 0, 0, 1): labels(2)})
    journal.close()
    assert list(read_journal(project + ".journal").blocks) == [(0, (0, 0, 0, 1))]
    assert np.array_equal(read_journal(project + ".journal.old").blocks[(0, (0, 0, 0, 0))], labels(1))
    assert messages == [f"unsaved labels of an earlier session, not restored, were kept as {project}.journal.old"]
