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
