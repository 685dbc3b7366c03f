"""The application's services: embedded Redis restarted after a crash, nothing left running after close."""

import os
import signal

import numpy as np
import psutil
import pytest

from backend.compute.geometry import Roi
from backend.config import Config
from backend.io.sources import open_source
from backend.service.gateway import CacheUnavailable
from ilastik_desktop.runtime.services import Services
from ilastik_desktop.runtime.settings import ComputeSettings
from tests.helpers import wait_for
from tests.integration.test_executor import _pipeline, small_project


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("services")), shape=(24, 96, 96))[0]


def request_until_served(gateway, roi, timeout):
    """The region, retrying while the cache is down (each try fails fast with CacheUnavailable)."""
    def served() -> list:
        return [gateway.request("Probabilities", roi).result(timeout=60)]  # in a list: an array has no truth value

    return wait_for(served, timeout, interval=0.2, message="the region was not served",
                    ignore=(CacheUnavailable,))[0]


@pytest.mark.timeout(180)
def test_the_app_restarts_its_embedded_redis_and_stops_everything(project):
    path = project
    source = open_source(os.path.join(os.path.dirname(path), "raw.h5/data"))
    pipeline = _pipeline(path)
    roi = Roi((0, 0, 0, 0), (1, 24, 96, 96))
    fast = Config().replace(executor__heartbeat_s=0.2, worker__heartbeat_s=0.2)
    with Services(ComputeSettings(workers=1, cache_mb=64, config=fast)) as services:
        services.wait_for_workers(timeout=60)
        children = [services.embedded.pid, services.local.process.pid]
        gateway = services.gateway(source, pipeline, (1, 12, 48, 48))
        try:
            expected = gateway.request("Probabilities", roi).result(timeout=60)
            os.kill(services.embedded.pid, signal.SIGKILL)
            wait_for(services.embedded.alive, 30, interval=0.1,  # nobody restarts it but the app itself
                     message="the app did not restart its cache server")
            assert services.embedded.alive() and services.embedded.pid != children[0]
            children.append(services.embedded.pid)
            gateway.cache.client.flushall()  # prove it is recomputed, not served from the old server
            assert np.array_equal(request_until_served(gateway, roi, timeout=30), expected)
            assert gateway.status().computed >= 8
        finally:
            gateway.close()
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in children)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("listen", ["tcp://127.0.0.1:0", "tcp://*:0"])
def test_the_printed_worker_command_names_the_address_we_listen_on(tmp_path, listen):
    from ilastik_desktop.runtime.services import machine_name

    settings = ComputeSettings(workers=0, listen=listen, config_dir=str(tmp_path), cache_mb=64)
    with Services(settings) as services:
        port = services.listen_address.rsplit(":", 1)[1]
        host = "127.0.0.1" if "127.0.0.1" in listen else machine_name()  # every interface: this machine's name
        command = services.worker_command()
        assert f"--connect tcp://{host}:{port} " in command and "localhost" not in command
        assert services.identity.public.decode() in command
    assert not machine_name().startswith(("localhost", "127."))


@pytest.mark.timeout(180)
def test_the_folders_of_a_killed_app_are_removed_when_the_next_one_starts(tmp_path):
    """kill -9 of an app left its folder and its cache server's (a socket, a log, a configuration) for good."""
    import subprocess
    import sys

    from tests.conftest import REPO

    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    script = ("import sys, time\n"
              "from ilastik_desktop.runtime.services import Services\n"
              "from ilastik_desktop.runtime.settings import ComputeSettings\n"
              "services = Services(ComputeSettings(workers=0, cache_mb=16))\n"
              "print(services.folder, services.embedded.socket_path, flush=True)\n"
              "time.sleep(600)\n")
    app = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    try:
        folders = [os.path.dirname(path) if path.endswith(".sock") else path for path in app.stdout.readline().split()]
        assert len(folders) == 2 and all(os.path.isdir(f) for f in folders), folders
        tree = [app.pid] + [child.pid for child in psutil.Process(app.pid).children(recursive=True)]
    finally:
        app.kill()
        app.wait(timeout=30)
    wait_for(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                             for pid in tree), 30, message="the killed app's cache server still runs")
    assert all(os.path.isdir(f) for f in folders)  # SIGKILL: nobody removed them
    other = subprocess.run([sys.executable, "-c", script.replace("time.sleep(600)", "services.close()")], env=env,
                           capture_output=True, text=True, timeout=120)
    assert other.returncode == 0, other.stderr
    assert not any(os.path.exists(f) for f in folders)
    assert os.listdir(tmp_path) == []  # and the second one's own folders are gone after close


def test_a_long_temporary_folder_still_gives_a_cache_server_and_local_workers(tmp_path, monkeypatch):
    """Socket paths under a long TMPDIR exceeded a unix socket's 107 bytes: the cache server never listened (the
    app said only 'the cache server did not start') and the local workers' socket could not be bound. Their
    folders now go to /tmp then."""
    import tempfile

    from backend.owned_folder import SOCKET_PATH_MAX
    from ilastik_desktop.runtime.settings import ComputeSettings

    long_folder = tmp_path / ("t" * 90)
    long_folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(long_folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    with Services(ComputeSettings(workers=1, cache_mb=16)) as services:
        assert len(services.embedded.socket_path) <= SOCKET_PATH_MAX
        assert services.cache.client.ping()
        assert services.executor.address.startswith("ipc://")
        assert len(services.executor.address) - len("ipc://") <= SOCKET_PATH_MAX
