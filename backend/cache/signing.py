"""Signed cache entries: whoever can write to a shared Redis cannot plant results or errors.

Every value and error the cache stores is signed with HMAC-SHA-256 under a key kept in the user's
configuration folder (``keys/cache.key``, 64 hex digits, readable by the user only, created on first use).
The signature covers the entry's Redis key too, so a signed entry copied under another key is refused.
Runs that share a cache share the results only if they share this file (copy it); to the others, each
other's entries are misses. The embedded cache server uses the same key and the same code.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from backend.errors import UserError
from backend.private_files import check_folder, check_private, config_dir, create_once

SIGNED = b"ILS1"
MAC_BYTES = hashlib.sha256().digest_size
KEY_BYTES = 32


def signing_key(directory: str | None = None) -> bytes:
    """The cache's signing key in the configuration folder ``directory``, created on first use."""
    folder = config_dir(directory)
    path = os.path.join(folder, "keys", "cache.key")
    check_folder(folder)
    try:
        if not os.path.exists(path):
            create_once(path, secrets.token_hex(KEY_BYTES).encode() + b"\n")
        check_private(path, "cache key")
        with open(path, "rb") as f:
            key = bytes.fromhex(f.read().strip().decode("ascii"))
    except OSError as exc:
        raise UserError(f"cannot create or read the cache key {path}: {exc.strerror or exc}") from None
    except ValueError:  # also UnicodeDecodeError
        key = b""
    if len(key) != KEY_BYTES:
        raise UserError(f"the cache key {path} is unreadable (expected {2 * KEY_BYTES} hex digits); delete it "
                        "to create a new one (entries signed with the old key are then computed again)")
    return key


class Signer:
    """Signs entries and opens signed ones with one key."""

    def __init__(self, key: bytes):
        self._key = key

    def _mac(self, name: str, payload: bytes) -> bytes:
        mac = hmac.new(self._key, name.encode() + b"\n", hashlib.sha256)
        mac.update(payload)
        return mac.digest()

    def sign(self, name: str, payload: bytes) -> bytes:
        """``payload`` as stored under the Redis key ``name``: ``ILS1`` + its HMAC + the payload."""
        return SIGNED + self._mac(name, payload) + payload

    def open(self, name: str, blob: bytes) -> bytes | None:
        """The payload of an entry signed by :meth:`sign` for ``name``; None if unsigned or wrongly signed."""
        head = len(SIGNED) + MAC_BYTES
        if len(blob) < head or blob[:len(SIGNED)] != SIGNED:
            return None
        payload = blob[head:]
        return payload if hmac.compare_digest(blob[len(SIGNED):head], self._mac(name, payload)) else None
