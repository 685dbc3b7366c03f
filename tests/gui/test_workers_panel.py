"""The workers panel: a worker of another version is reported, the local process count can change."""

import json
import os
import threading

import pytest
import zmq
from PyQt5 import QtCore

from tests.gui.conftest import open_and_settle
from tests.integration.test_zmq import free_port

pytestmark = pytest.mark.timeout(300)


class OldWorker:
    """A listening peer that answers everything with a READY of protocol version 0 (an older release)."""

    def __init__(self, endpoint: str):
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        ready = json.dumps({"v": 0, "type": "READY", "arrays": [], "processes": 4, "host": "old"}).encode()
        while not self.stopped.is_set():
            if self.socket.poll(100):
                self.socket.recv_multipart()
                self.socket.send_multipart([ready])

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.socket.close()
        self.context.term()


def test_a_worker_of_another_version_is_reported(qtbot, window, services):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    old = OldWorker(endpoint)
    try:
        dialog = window.workers_panel.open_dialog()
        dialog.endpoint.setText(endpoint)
        with qtbot.waitSignal(dialog.finished_check, timeout=30_000) as check:
            dialog.connect_button.click()
        assert check.args[0] is False
        assert "version mismatch" in check.args[1] and "protocol version 0" in check.args[1]
        assert "version mismatch" in dialog.result.text()
        assert all(w["endpoint"] != endpoint for w in services.executor.status()["workers"])
    finally:
        old.close()


def test_changing_the_local_process_count(qtbot, window, services, data_dir):
    panel = window.workers_panel
    assert panel.local_count.value() == 2
    try:
        panel.local_count.setValue(1)
        panel.apply_local.click()
        qtbot.waitUntil(lambda: panel.apply_local.isEnabled() and services.executor.status()["processes"] == 1,
                        timeout=60_000)
        open_and_settle(qtbot, window, os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp"))
        assert window.loader.is_complete("xy", "Probabilities")  # computed by the new single process
    finally:
        panel.local_count.setValue(2)
        panel.apply_local.click()
        qtbot.waitUntil(lambda: panel.apply_local.isEnabled() and services.executor.status()["processes"] == 2,
                        timeout=60_000)


def test_the_workers_panel_lists_dask_workers_with_threads_memory_and_tasks(qtbot, tmp_path):
    from backend.distributed.dask_clusters import DaskSettings
    from ilastik_desktop.config import ComputeSettings
    from ilastik_desktop.main_window import MainWindow
    from ilastik_desktop.services import Services

    settings = QtCore.QSettings(str(tmp_path / "settings.ini"), QtCore.QSettings.IniFormat)
    with Services(ComputeSettings(dask=DaskSettings(address="local:2"), config_dir=str(tmp_path))) as services:
        services.wait_for_workers(timeout=60)
        window = MainWindow(services, settings, interactive=False)
        qtbot.addWidget(window)
        panel = window.workers_panel
        qtbot.waitUntil(lambda: panel.table.rowCount() == 2, timeout=15_000)
        headers = [panel.table.horizontalHeaderItem(c).text() for c in range(4)]
        assert headers == ["Dask worker", "Threads", "Memory (MB)", "Memory limit (MB)"]
        assert panel.table.item(0, 0).text().startswith("tcp://127.0.0.1:") and panel.table.item(0, 1).text() == "1"
        assert int(panel.table.item(0, 2).text()) > 0 and "2 processes" in panel.summary.text()
        assert not panel.connect_button.isEnabled() and not panel.apply_local.isEnabled()
        window.close()
