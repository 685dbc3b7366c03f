"""The allow-lists (``authorized_workers``, ``authorized_gateways``) are refused when others can change them:
whoever writes to them decides which keys are trusted (the secret key is checked the same way)."""

import os
import stat
import subprocess
import sys

import pytest
import zmq

from backend.distributed.security import KeyStore
from backend.errors import UserError
from tests.conftest import REPO


def _listed(tmp_path, role: str) -> tuple[str, bytes]:
    key = zmq.curve_keypair()[0]
    os.chmod(tmp_path, 0o700)
    path = tmp_path / f"authorized_{role}s"
    path.write_text(key.decode() + "  # a colleague's machine\n")
    os.chmod(path, 0o600)
    return str(path), key


@pytest.mark.parametrize("role", ["worker", "gateway"])
@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_an_allow_list_others_can_change_is_refused(tmp_path, role, mode):
    path, key = _listed(tmp_path, role)
    store = KeyStore(str(tmp_path))
    assert store.authorized(role) == {key}
    os.chmod(path, mode)
    with pytest.raises(UserError) as refused:
        store.authorized(role)
    message = str(refused.value)
    assert "\n" not in message and path in message and f"chmod go-w '{path}'" in message


def test_an_allow_list_in_a_folder_others_can_change_is_refused(tmp_path):
    path, key = _listed(tmp_path, "worker")
    os.chmod(tmp_path, 0o777)
    with pytest.raises(UserError, match=f"chmod go-w '{tmp_path}'"):
        KeyStore(str(tmp_path)).authorized("worker")
    os.chmod(tmp_path, 0o755)  # readable by others is fine: the list holds public keys
    assert KeyStore(str(tmp_path)).authorized("worker") == {key}


def test_allowing_a_key_writes_a_list_only_its_owner_can_change(tmp_path):
    old = os.umask(0o002)  # a umask that would leave a new file group-writable
    try:
        store = KeyStore(str(tmp_path / "config"))
        key = zmq.curve_keypair()[0]
        store.add_authorized("worker", key)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "config" / "authorized_workers").st_mode) == 0o600
    assert store.authorized("worker") == {key}


def test_the_worker_refuses_a_writable_allow_list_in_one_line(tmp_path):
    path, _ = _listed(tmp_path, "gateway")
    os.chmod(path, 0o666)
    result = subprocess.run([sys.executable, "-m", "ilastik_desktop.cli.worker", "--listen", "tcp://127.0.0.1:0",
                             "--config-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and f"chmod go-w '{path}'" in result.stderr
