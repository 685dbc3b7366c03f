"""The folder in which a :class:`~backend.distributed.local_executor.LocalExecutor` hands its pipelines to its
compute processes (one ``.npz`` file per pipeline), and the clean-up of folders left behind.

A folder's owner holds an exclusive ``flock`` on the folder's ``owner.lock`` for as long as it lives; the
kernel drops the lock when the process ends, however it ends (SIGKILL too). Each new folder first removes
this user's folders whose lock nobody holds: their owner is gone. The lock file is locked under a temporary
name and then renamed into place, so a folder being created is never taken for a stale one; folders of other
users and folders without a lock file are left alone.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

from backend.compute.pipeline import Pipeline

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no clean-up of stale folders
    fcntl = None

log = logging.getLogger(__name__)
PREFIX = "ilastik-desktop-pipelines-"
LOCK = "owner.lock"


def remove_stale_folders(parent: str | None = None) -> list[str]:
    """Remove this user's pipeline folders in ``parent`` (default: the temporary folder) whose owner is gone;
    returns their paths."""
    parent = parent or tempfile.gettempdir()
    removed = []
    try:
        names = [name for name in os.listdir(parent) if name.startswith(PREFIX)]
    except OSError:
        return removed
    for name in names:
        folder = os.path.join(parent, name)
        if _owner_gone(folder):
            removed.append(folder)
    if removed:
        log.info("removed %d pipeline folders left by ended processes", len(removed))
    return removed


def _owner_gone(folder: str) -> bool:
    """Remove ``folder`` if it is ours and its lock is free (its owner ended); True if it was removed."""
    if fcntl is None:
        return False
    try:
        if os.lstat(folder).st_uid != os.getuid():
            return False
        descriptor = os.open(os.path.join(folder, LOCK), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # not ours, gone meanwhile, or no lock file (being created)
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: its owner lives
        os.close(descriptor)
        return False
    try:
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(descriptor)
    return True


class PipelineFolder:
    """A private folder of pipeline files, locked by this process until :meth:`remove` (or its end)."""

    def __init__(self, parent: str | None = None):
        remove_stale_folders(parent)
        self.path = tempfile.mkdtemp(prefix=PREFIX, dir=parent)
        self._lock: int | None = None
        if fcntl is not None:
            temporary = os.path.join(self.path, f".{LOCK}")
            self._lock = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(temporary, os.path.join(self.path, LOCK))

    def file(self, fingerprint: str) -> str:
        """Where the pipeline ``fingerprint`` is stored."""
        return os.path.join(self.path, fingerprint + ".npz")

    def save(self, pipeline: Pipeline, fingerprint: str) -> None:
        """Store ``pipeline`` under ``fingerprint`` (complete or not at all: readers never see half a file)."""
        temporary = os.path.join(self.path, f".{fingerprint}.npz")
        pipeline.save(temporary)
        os.replace(temporary, self.file(fingerprint))

    def delete(self, fingerprint: str) -> None:
        """Delete the file of ``fingerprint`` (compute processes that loaded it keep their copy)."""
        try:
            os.unlink(self.file(fingerprint))
        except FileNotFoundError:
            pass

    def fingerprints(self) -> list[str]:
        """The pipelines stored now."""
        return sorted(name[:-4] for name in os.listdir(self.path) if name.endswith(".npz") and name[0] != ".")

    def remove(self) -> None:
        """Delete the folder and let go of its lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
