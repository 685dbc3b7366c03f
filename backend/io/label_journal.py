"""The label journal: painted labels and class edits appended to a file beside the project as they happen, so
that labels not yet saved survive a crash or a kill; the format is in :mod:`label_journal_format`.

The owner (the training controller) calls :meth:`LabelJournal.record_blocks`,
:meth:`~LabelJournal.record_classes` and :meth:`~LabelJournal.record_lane` on its own thread, which only
copies the labels and queues them: one background thread encodes each record and appends it at once (one
``write`` of a whole frame, so a kill leaves at most the last record torn) and calls ``fsync`` at most every
``sync_interval_s``. The owner's thread never waits on the disk. A save calls :meth:`~LabelJournal.saving`
when it starts and :meth:`~LabelJournal.saved` when it succeeded: the journal then keeps only the records that
came after the save started, under a header naming the new saved state. The file is written anew (header and
records in a temporary file, then renamed over it) whenever it starts over, so it always begins with a whole
header.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping

import numpy as np

from backend.io.label_journal_format import (
    MAGIC,
    Index,
    JournalContents,
    block_payload,
    classes_payload,
    frame,
    header_payload,
    journal_paths,
    lane_payload,
    project_state,
)

log = logging.getLogger(__name__)
_STOP = object()


class LabelJournal:
    """The journal of one open project; see the module docstring. ``report`` is told, in one line, where
    the journal went when the project's folder is not writable, and when journalling fails."""

    def __init__(self, project_path: str, fallback_dir: str, sync_interval_s: float = 0.5,
                 report: Callable[[str], None] = log.warning):
        self.project_path, self.fallback_dir = os.path.abspath(project_path), fallback_dir
        self.sync_interval_s, self.report = sync_interval_s, report
        self.path: str | None = None  # where the records go, once the first one is written
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._tokens = itertools.count(1)
        self._marks: dict[int, int | None] = {}  # save token -> file offset when that save started
        self._queued = self._done = 0
        self._progress = threading.Condition()
        self._fd: int | None = None
        self._header_end = 0
        self._unsynced = False
        self._failed = False
        self._state: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="label-journal", daemon=True)
        self._thread.start()
        self._submit(self._take_state)

    # -- the owner's side: copy and queue, never wait ---------------------------------------------------
    def record_blocks(self, lane: int, blocks: Mapping[Index, np.ndarray | None]) -> None:
        """Journal the labels of these blocks of ``lane`` as they are now (None or all zero: empty)."""
        for index, labels in blocks.items():
            copy = None if labels is None or not labels.any() else labels.copy()
            shape = (0, 0, 0, 0) if copy is None else copy.shape
            self._submit(self._append, lambda i=tuple(index), s=shape, c=copy: block_payload(lane, i, s, c))

    def record_classes(self, names: list[str], colors: list[tuple[int, int, int]]) -> None:
        """Journal the classes' names and colours as they are now."""
        names, colors = list(names), [tuple(c) for c in colors]
        self._submit(self._append, lambda: classes_payload(names, colors))

    def record_lane(self, lane: int, image: str, axes: str | None) -> None:
        """Journal that lane ``lane`` was added, showing ``image`` read with ``axes``."""
        self._submit(self._append, lambda: lane_payload(lane, image, axes))

    def saving(self) -> int:
        """A save starts; the token to pass to :meth:`saved` once it succeeded."""
        token = next(self._tokens)
        self._submit(self._mark, token)
        return token

    def saved(self, token: int, project_path: str | None = None) -> None:
        """The save that began with ``token`` succeeded (into ``project_path`` if it is now elsewhere: Save
        As): keep only the records that came after it started."""
        self._submit(self._keep_after, token, os.path.abspath(project_path or self.project_path))

    def restored(self, contents: JournalContents) -> None:
        """The owner took ``contents`` (an earlier session's journal) over: journal them again, under a
        header naming the project's current state, and remove the old file."""
        self._submit(self._start_over, contents.payloads(), b"", contents.path)

    def clear(self) -> None:
        """Forget every record (the labels were discarded): the file is removed."""
        self._submit(self._remove)

    def wait_written(self, timeout: float) -> bool:
        """Wait until everything recorded so far is in the file (written, not necessarily synced)."""
        with self._progress:
            target = self._queued
            return self._progress.wait_for(lambda: self._done >= target, timeout)

    def close(self) -> None:
        """Write what is queued, sync, close the file and stop the thread; records after this are dropped."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def _submit(self, work: Callable, *args) -> None:
        with self._progress:
            self._queued += 1
        self._queue.put((work, args))

    # -- the journal's thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        last_sync = time.monotonic()
        while True:
            wait = None if not self._unsynced else max(0.0, last_sync + self.sync_interval_s - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if item is not None:
                self._handle(*item)
            if self._unsynced and time.monotonic() - last_sync >= self.sync_interval_s:
                self._sync()
                last_sync = time.monotonic()
        self._sync()
        self._close_file()

    def _handle(self, work: Callable, args: tuple) -> None:
        try:
            work(*args)
        except OSError as exc:
            if not self._failed:  # said once: a full disk would say it for every stroke
                self._failed = True
                self.report(f"{self.path or self.project_path + '.journal'}: unsaved labels cannot be journalled "
                            f"({exc.strerror or exc}); save to keep them")
        except Exception:  # the journal must never take the window down
            log.exception("label journal: %s failed", getattr(work, "__name__", work))
        finally:
            with self._progress:
                self._done += 1
                self._progress.notify_all()

    def _take_state(self) -> None:
        self._state = project_state(self.project_path)

    def _append(self, encode: Callable[[], bytes]) -> None:
        if self._fd is None:
            if self.path is None:
                self._set_aside_earlier()
            self._start_over([])
        os.write(self._fd, frame(encode()))
        self._unsynced = True

    def _mark(self, token: int) -> None:
        self._marks[token] = None if self._fd is None else os.lseek(self._fd, 0, os.SEEK_END)

    def _keep_after(self, token: int, project_path: str) -> None:
        if token not in self._marks:
            return
        start = self._marks.pop(token)
        start = self._header_end if start is None else start
        later = {t: o for t, o in self._marks.items() if t > token}
        tail = b""
        if self._fd is not None:
            with open(self.path, "rb") as f:
                f.seek(start)
                tail = f.read()
        old = self.path
        self._close_file()
        self.project_path, self.path = project_path, None
        self._state = project_state(project_path)
        if tail:  # records that came after the save started: kept, under the new saved state
            self._start_over([], tail)
        self._marks = {t: None if o is None or not tail else o - start + self._header_end for t, o in later.items()}
        if old is not None and old != self.path:
            _remove_file(old)

    def _start_over(self, payloads: list[bytes], raw_records: bytes = b"", replaces: str | None = None) -> None:
        """Write the journal anew: a header for the current state, then ``payloads`` and ``raw_records``."""
        self._close_file()
        path = self.path or self._writable_path()
        header = MAGIC + frame(header_payload(self.project_path, self._state))
        temporary = f"{path}.{os.getpid()}.new"
        with open(temporary, "wb") as f:
            f.write(header + b"".join(frame(p) for p in payloads) + raw_records)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        _sync_folder(path)
        self.path, self._header_end = path, len(header)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        if replaces is not None and os.path.abspath(replaces) != path:
            _remove_file(replaces)

    def _set_aside_earlier(self) -> None:
        """An earlier session's journal that was neither restored nor discarded is renamed, not overwritten."""
        for path in journal_paths(self.project_path, self.fallback_dir):
            if os.path.isfile(path):
                os.replace(path, path + ".old")
                self.report(f"unsaved labels of an earlier session, not restored, were kept as {path}.old")

    def _writable_path(self) -> str:
        beside, fallback = journal_paths(self.project_path, self.fallback_dir)
        try:
            if not os.stat(os.path.dirname(beside)).st_mode & 0o222:  # marked read-only: root could still write
                raise PermissionError(errno.EACCES, "the folder is read-only")
            with open(beside, "ab"):
                pass
            return beside
        except OSError as exc:
            os.makedirs(os.path.dirname(fallback), mode=0o700, exist_ok=True)
            self.report(f"{os.path.dirname(beside)} is not writable ({exc.strerror or exc}): unsaved labels are "
                        f"journalled in {fallback}")
            return fallback

    def _remove(self) -> None:
        self._close_file()
        for path in journal_paths(self.project_path, self.fallback_dir):
            _remove_file(path)
        self._marks = dict.fromkeys(self._marks)

    def _sync(self) -> None:
        if self._fd is not None and self._unsynced:
            os.fsync(self._fd)
        self._unsynced = False

    def _close_file(self) -> None:
        if self._fd is not None:
            self._sync()
            os.close(self._fd)
            self._fd = None


def _remove_file(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        return
    _sync_folder(path)


def _sync_folder(path: str) -> None:
    """Make a rename or removal in ``path``'s folder durable."""
    descriptor = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
