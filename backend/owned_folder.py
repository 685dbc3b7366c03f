"""Private temporary folders that are removed even when their owner is killed.

A folder's owner holds an exclusive ``flock`` on the folder's ``owner.lock`` for as long as it lives; the
kernel drops the lock when the process ends, however it ends (SIGKILL too). Each new folder first removes
this user's folders of the same prefix whose lock nobody holds: their owner is gone. The lock file is locked
under a temporary name and then renamed into place, so a folder being created is never taken for a stale
one; folders of other users and folders without a lock file are left alone.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

from backend.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no clean-up of stale folders
    fcntl = None

log = logging.getLogger(__name__)
LOCK = "owner.lock"
SOCKET_PATH_MAX = 100  # a unix socket's path holds 107 bytes on Linux, 103 on macOS
SHORT_TEMPORARY_FOLDER = "/tmp"


def socket_folder_parent(prefix: str, socket_name: str) -> str | None:
    """Where a new folder ``prefix...`` holding the unix socket ``socket_name`` goes: the temporary folder (None),
    or /tmp when the socket's path under the temporary folder would be too long for a unix socket; UserError if
    neither can hold it."""
    base = tempfile.gettempdir()
    if len(os.path.join(base, prefix + "x" * 8, socket_name)) <= SOCKET_PATH_MAX:  # mkdtemp adds 8 characters
        return None
    if os.path.isdir(SHORT_TEMPORARY_FOLDER) and os.access(SHORT_TEMPORARY_FOLDER, os.W_OK | os.X_OK):
        return SHORT_TEMPORARY_FOLDER
    room = SOCKET_PATH_MAX - len(prefix) - len(socket_name) - 10
    raise UserError(f"the temporary folder {base} is too long a path for a unix socket in it (at most {room} "
                    "characters): set TMPDIR to a shorter folder")


def remove_stale_folders(prefix: str, parent: str | None = None) -> list[str]:
    """Remove this user's folders named ``prefix...`` in ``parent`` (default: the temporary folder) whose owner
    is gone; returns their paths."""
    parent = parent or tempfile.gettempdir()
    try:
        names = [name for name in os.listdir(parent) if name.startswith(prefix)]
    except OSError:
        return []
    removed = [os.path.join(parent, name) for name in names if _remove_if_abandoned(os.path.join(parent, name))]
    if removed:
        log.info("removed %d folders left by ended processes (%s...)", len(removed), prefix)
    return removed


def _remove_if_abandoned(folder: str) -> bool:
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


class OwnedFolder:
    """A new private folder ``prefix...`` (mode 0700), locked by this process until :meth:`remove` (or its end);
    folders of the same prefix whose owners ended are removed first."""

    def __init__(self, prefix: str, parent: str | None = None):
        remove_stale_folders(prefix, parent)
        self.path = tempfile.mkdtemp(prefix=prefix, dir=parent)
        self._lock: int | None = None
        if fcntl is not None:
            temporary = os.path.join(self.path, f".{LOCK}")
            self._lock = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(temporary, os.path.join(self.path, LOCK))

    def remove(self) -> None:
        """Delete the folder and let go of its lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
