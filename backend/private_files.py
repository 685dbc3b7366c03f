"""Files only this user may read or change: the configuration folder, keys created once, permission checks.

The worker's key pairs, the cache's signing key and the allow-lists live in one configuration folder. Keys
are created by whichever process comes first (written in full under a temporary name, then linked into
place, which fails if another process was first), and every load checks that no other user can read a key
or change a file that decides whom to trust.
"""

from __future__ import annotations

import os
import threading

import platformdirs

from backend.errors import UserError


def config_dir(explicit: str | None = None) -> str:
    """The configuration directory: ``explicit``, ``$ILASTIK_DESKTOP_CONFIG_DIR`` or the platform's default."""
    return explicit or os.environ.get("ILASTIK_DESKTOP_CONFIG_DIR") or platformdirs.user_config_dir("ilastik-desktop")


def check_folder(directory: str) -> None:
    """UserError if the configuration directory ``directory`` exists as a file."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"the configuration directory {directory} is a file; give a folder (--config-dir)")


def create_once(path: str, content: bytes) -> bool:
    """Write ``content`` to ``path`` (mode 0600, its folder 0700) unless it exists or another process writes it
    at the same moment; True if this call wrote it (the first writer's content is the one that stays)."""
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    temporary = os.path.join(folder, f".{os.getpid()}-{threading.get_ident()}.{os.path.basename(path)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(content)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)
    return True


def check_private(path: str, what: str) -> None:
    """Refuse (UserError naming the chmod to run) a secret ``what`` at ``path`` that other users can read or
    replace: the file must be 0600-like, its folder writable by the user only."""
    if os.name != "posix":
        return
    for item, label, mask, mode in ((path, what, 0o077, "600"), (os.path.dirname(path), "key folder", 0o022, "700")):
        bits = os.stat(item).st_mode
        if bits & mask:
            raise UserError(f"the {label} {item} can be read or changed by other users (mode {bits & 0o777:o}); "
                            f"run: chmod {mode} '{item}'")


def check_unwritable(path: str, what: str) -> None:
    """Refuse a ``what`` at ``path`` that other users can change, or whose folder they can change (whoever writes
    to it decides whom to trust). FileNotFoundError if it does not exist."""
    if os.name != "posix":
        return
    for item, label in ((path, what), (os.path.dirname(path), f"folder of the {what}")):
        bits = os.stat(item).st_mode
        if bits & 0o022:
            raise UserError(f"the {label} {item} can be changed by other users (mode {bits & 0o777:o}); "
                            f"run: chmod go-w '{item}'")
