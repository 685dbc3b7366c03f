"""CurveZMQ for endpoints that leave the machine: key pairs, allow-lists and the authenticator.

Keys are created on first use in the user's configuration directory (``keys/<role>.key`` holds the
public key, ``keys/<role>.key_secret`` the secret one, readable by the user only). Peers are
trusted when their public key was given explicitly or is listed in ``authorized_<role>s`` there
(one Z85 key per line, anything after it and a space is a comment; other lines starting with ``#``
are comments). Loopback and ipc endpoints stay unencrypted.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import zmq
from zmq.auth.thread import ThreadAuthenticator

from backend.errors import UserError
from backend.private_files import check_folder, check_private, check_unwritable, config_dir, create_once

log = logging.getLogger(__name__)
KEY_LENGTH = 40  # Z85 text of a 32-byte key


def is_local(endpoint: str) -> bool:
    """True for ipc/inproc endpoints and TCP endpoints on a loopback address."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(endpoint: str, what: str) -> str:
    """A ZeroMQ endpoint ``tcp://HOST:PORT`` (port 0-65535, or ``*``) or ``ipc://PATH``; UserError otherwise."""
    if endpoint.startswith("ipc://") and len(endpoint) > 6:
        return endpoint
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    valid = endpoint.startswith("tcp://") and bool(host) and (port == "*" or (port.isdigit() and int(port) <= 65535))
    if not valid:
        raise UserError(f"{what} '{endpoint}': expected tcp://HOST:PORT with a port from 0 to 65535 (or ipc://PATH)")
    return endpoint


def check_key(text: str, what: str = "public key") -> bytes:
    """A Z85 public key as bytes, or a UserError that says what is wrong with it."""
    key = text.strip()
    try:
        valid = len(key) == KEY_LENGTH and len(zmq.utils.z85.decode(key.encode())) == 32
    except Exception:  # z85 raises ValueError, KeyError or struct.error for text that is not Z85
        valid = False
    if not valid:
        raise UserError(f"'{text}' is not a valid {what} (expected {KEY_LENGTH} Z85 characters, "
                        "as printed by ilastik-worker --print-key)")
    return key.encode()


class KeyStore:
    """This user's key pairs and allow-lists in ``directory``."""

    def __init__(self, directory: str | None = None):
        self.directory = config_dir(directory)

    def keypair(self, role: str) -> tuple[bytes, bytes]:
        """The (public, secret) key pair of ``role`` ("gateway" or "worker"), created on first use."""
        public_path = os.path.join(self.directory, "keys", f"{role}.key")
        secret_path = public_path + "_secret"
        check_folder(self.directory)
        try:
            if not os.path.exists(secret_path):
                self._create(public_path, secret_path)
            check_private(secret_path, "secret key")
        except OSError as exc:
            raise UserError(f"cannot create or read the key pair in {os.path.dirname(public_path)}: "
                            f"{exc.strerror or exc}") from None
        try:
            with open(secret_path, "rb") as f:
                secret = f.read().strip()
            check_key(secret.decode(), "secret key")
            public = zmq.curve_public(secret)  # the secret decides: the public file is a copy for the user
        except (OSError, UnicodeDecodeError, UserError, zmq.ZMQError) as exc:
            raise UserError(f"the key pair in {os.path.dirname(public_path)} is unreadable ({exc}); "
                            f"delete {role}.key and {role}.key_secret to create a new one") from None
        return public, secret

    def _create(self, public_path: str, secret_path: str) -> None:
        """Create the pair unless another process does so at the same time (every process uses the first pair)."""
        public, secret = zmq.curve_keypair()
        if not create_once(secret_path, secret + b"\n"):
            return  # another process was first: its pair is the one
        with open(public_path + ".tmp", "wb") as f:
            f.write(public + b"\n")
        os.replace(public_path + ".tmp", public_path)
        log.info("created a new key pair in %s", os.path.dirname(public_path))

    def authorized(self, role: str) -> set[bytes]:
        """The public keys listed in ``authorized_<role>s`` (empty when the file does not exist)."""
        path = os.path.join(self.directory, f"authorized_{role}s")
        keys: set[bytes] = set()
        try:
            check_unwritable(path, "allow-list")
            with open(path, encoding="utf-8") as f:
                lines = [line.strip() for line in f]
        except FileNotFoundError:
            return keys
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read this allow-list ({exc})") from None
        for number, line in enumerate(lines, 1):
            token = line.split()[0] if line else ""
            try:
                keys.add(check_key(token))
            except UserError as exc:
                if token and not token.startswith("#"):  # '#' is a Z85 character too: a key may start with it
                    raise UserError(f"{path}, line {number}: {exc}") from None
        return keys

    def add_authorized(self, role: str, key: bytes) -> None:
        """Append ``key`` to ``authorized_<role>s`` (unless it is listed already), so later runs accept it."""
        if key in self.authorized(role):
            return
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = os.path.join(self.directory, f"authorized_{role}s")
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(descriptor, "a+", encoding="ascii") as f:
            f.seek(0)
            ends_open = (f.read() or "\n")[-1] != "\n"
            f.write(("\n" if ends_open else "") + key.decode() + "  # allowed in the Connect dialog\n")


@dataclass
class CurveIdentity:
    """Our key pair plus the public keys of peers we accept."""

    public: bytes
    secret: bytes
    allowed: set[bytes] = field(default_factory=set)

    def allow(self, key: bytes) -> None:
        """Trust one more peer."""
        self.allowed.add(key)

    def make_server(self, sock: zmq.Socket) -> None:
        """Encrypt ``sock`` and authenticate its peers (call before bind)."""
        sock.curve_secretkey, sock.curve_publickey = self.secret, self.public
        sock.curve_server = True

    def make_client(self, sock: zmq.Socket, server_key: bytes) -> None:
        """Encrypt ``sock`` towards a server with ``server_key`` (call before connect)."""
        sock.curve_secretkey, sock.curve_publickey = self.secret, self.public
        sock.curve_serverkey = server_key


class Authenticator:
    """Admits CURVE peers of one context whose keys ``identity`` allows, and remembers the refused ones."""

    def __init__(self, context: zmq.Context, identity: CurveIdentity):
        self.identity = identity
        self.refused: list[str] = []
        self._lock = threading.Lock()
        self._thread = ThreadAuthenticator(context, log=logging.getLogger(__name__ + ".zap"))
        self._thread.start()
        self._thread.configure_curve_callback("*", credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP callback: is this client key allowed?"""
        if key in self.identity.allowed:
            return True
        text = key.decode(errors="replace")
        log.warning("refused a peer with an unknown key %s", text)
        with self._lock:
            self.refused = (self.refused + [text])[-20:]
        return False

    def stop(self) -> None:
        """Stop the authentication thread."""
        self._thread.stop()
