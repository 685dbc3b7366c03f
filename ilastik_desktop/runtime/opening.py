"""Opening projects, without Qt: off the caller's thread, with the raw data the user chose, else the raw data
remembered for the project, else the project's own; recent projects.

Raw data the user located is remembered per project once it opens and fits; remembered raw data that no
longer opens or fits is forgotten (and the user told so). Outcomes come back through ``call_soon`` (the
window passes its GUI bridge) as signals: ``opened(document)``, ``raw_missing(path, error)`` (ask the user
to locate it), ``failed(message)``; after ``opened``, ``journal_found(document, journal)`` when labels painted
in an earlier session that ended without saving them were journalled for the project (offer to restore them:
:func:`journal_offer` says what to ask, and whether the project was saved elsewhere since).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from psygnal import Signal

from backend.errors import RawDataMissing, UserError
from backend.io.label_journal_format import JournalContents, find_journal
from backend.private_files import config_dir
from ilastik_desktop.runtime.document import Document, open_document
from ilastik_desktop.runtime.services import Services
from ilastik_desktop.runtime.training import call_inline

log = logging.getLogger(__name__)
RECENT_KEY, RAW_KEY = "recent", "raw_data/"
RECENT_KEPT = 10


class Preferences(Protocol):
    """Where choices are kept between runs (QSettings has exactly these methods)."""

    def value(self, key: str, default=None): ...
    def setValue(self, key: str, value) -> None: ...  # noqa: N802 - QSettings' name
    def remove(self, key: str) -> None: ...
    def contains(self, key: str) -> bool: ...


class ProjectOpener:
    """Opens projects in the background and keeps what the user chose; see the module docstring."""

    opened = Signal(object)
    raw_missing = Signal(str, object)
    failed = Signal(str)
    journal_found = Signal(object, object)

    def __init__(self, services: Services, preferences: Preferences, call_soon: Callable[..., None] = call_inline):
        self.services, self.preferences, self.call_soon = services, preferences, call_soon
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="window-io")

    def open(self, path: str, raw_data: str | None = None, remember: bool = False) -> None:
        """Open ``path`` in the background with ``raw_data`` (kept for next time if ``remember`` and it opens),
        else the raw data remembered for it, else the project's own."""
        path = os.path.abspath(path)
        remembered = self.remembered(path)
        memory = "remember" if remember and raw_data else "remembered" if not raw_data and remembered else ""
        self.io.submit(self._open, path, raw_data or remembered, memory)

    def _open(self, path: str, raw_data: str | None, memory: str) -> None:
        try:
            document = open_document(path, self.services, raw_data)
        except RawDataMissing as exc:
            self.call_soon(self.raw_missing.emit, path, exc)
            return
        except UserError as exc:
            if memory == "remembered":  # it no longer fits (or reads): do not offer it again
                self.call_soon(self.forget, path)
                exc = UserError(f"{exc}\n\nThe remembered raw data {raw_data} was forgotten; opening the project "
                                "again uses the path it records.")
            self.call_soon(self.failed.emit, str(exc))
            return
        except Exception as exc:  # an unexpected failure is still a message, not a crash
            log.exception("opening %s failed", path)
            self.call_soon(self.failed.emit, f"{path}: {type(exc).__name__}: {exc}")
            return
        try:
            journal = find_journal(document.project.path, config_dir())
        except Exception:  # a journal that cannot be read must not keep the project from opening
            log.exception("reading the label journal of %s failed", path)
            journal = None
        self.call_soon(self._opened, document, raw_data if memory == "remember" else None, journal)

    def _opened(self, document: Document, remember: str | None, journal: JournalContents | None = None) -> None:
        path = document.project.path
        if remember:
            self.preferences.setValue(RAW_KEY + path, remember)
        self.add_recent(path)
        self.opened.emit(document)
        if journal is not None:
            self.journal_found.emit(document, journal)

    # -- what is kept between runs --------------------------------------------------------------------
    def remembered(self, path: str) -> str | None:
        """The raw data remembered for the project at ``path``, if any."""
        return self.preferences.value(RAW_KEY + os.path.abspath(path), None)

    def forget(self, path: str) -> None:
        """Forget the raw data remembered for the project at ``path``."""
        self.preferences.remove(RAW_KEY + os.path.abspath(path))

    def moved(self, old: str, new: str) -> None:
        """The project at ``old`` now lives at ``new`` (Save As): recent files and remembered raw data follow."""
        self.add_recent(new)
        raw = self.remembered(old)
        if raw is not None:
            self.preferences.setValue(RAW_KEY + new, raw)

    def recent(self) -> list[str]:
        """Recently opened projects, the latest first."""
        return list(self.preferences.value(RECENT_KEY) or [])

    def add_recent(self, path: str) -> None:
        """Put ``path`` first among the recent projects."""
        recent = [p for p in self.recent() if p != path]
        self.preferences.setValue(RECENT_KEY, [path] + recent[:RECENT_KEPT - 1])

    def close(self) -> None:
        """Wait for an opening in progress, then stop the background thread."""
        self.io.shutdown(wait=True, cancel_futures=True)


def located_raw_data(error: RawDataMissing, chosen: str) -> str:
    """The raw data to use when the user located ``chosen`` for a missing file: the same dataset inside it."""
    internal = error.path.split(".h5/", 1)[1] if ".h5/" in error.path else ""
    return chosen + ("/" + internal if internal and chosen.endswith(".h5") else "")


def journal_offer(project_path: str, journal: JournalContents) -> tuple[bool, str]:
    """Whether ``journal`` belongs to the project's saved state, and the question offering to restore it."""
    name = os.path.basename(project_path)
    blocks = len(journal.blocks)
    what = f"{blocks} label block{'s' if blocks != 1 else ''}" + (" and class changes" if journal.classes else "")
    belongs = journal.belongs_to(project_path)
    text = (f"Labels painted in {name} were not saved before ilastik-desktop ended ({what}, kept in "
            f"{journal.path}).")
    if belongs:
        return True, text + " Restore them?"
    return False, (text + f" But {name} was saved or changed elsewhere since they were painted: restoring "
                   "puts them over its labels as they are now. Restore them anyway?")
