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
        assert all(w.endpoint != endpoint for w in services.executor.status().workers)
    finally:
        old.close()


def test_changing_the_local_process_count(qtbot, window, services, data_dir):
    panel = window.workers_panel
    assert panel.local_count.value() == 2
    try:
        panel.local_count.setValue(1)
        panel.apply_local.click()
        qtbot.waitUntil(lambda: panel.apply_local.isEnabled() and services.executor.status().processes == 1,
                        timeout=60_000)
        open_and_settle(qtbot, window, os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp"))
        assert window.loader.is_complete("xy", "Probabilities")  # computed by the new single process
    finally:
        panel.local_count.setValue(2)
        panel.apply_local.click()
        qtbot.waitUntil(lambda: panel.apply_local.isEnabled() and services.executor.status().processes == 2,
                        timeout=60_000)


def test_the_workers_panel_lists_dask_workers_with_threads_memory_and_tasks(qtbot, tmp_path):
    from backend.distributed.dask_clusters import DaskSettings
    from ilastik_desktop._qt.main_window import MainWindow
    from ilastik_desktop.runtime.services import Services
    from ilastik_desktop.runtime.settings import ComputeSettings

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


def test_lost_workers_stay_listed_with_the_reason_and_local_and_remote_are_told_apart(qtbot, window, services,
                                                                                       data_dir):
    from tests.integration.workers import kill_worker, start_worker, wait_listening

    panel = window.workers_panel
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    worker = start_worker("--listen", endpoint)
    try:
        wait_listening(endpoint)
        dialog = panel.open_dialog()
        dialog.endpoint.setText(endpoint)
        with qtbot.waitSignal(dialog.finished_check, timeout=30_000) as check:
            dialog.connect_button.click()
        assert check.args[0], check.args[1]
        open_and_settle(qtbot, window, os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp"))
        rows = lambda: [[panel.table.item(r, c).text() for c in range(4)]  # noqa: E731
                        for r in range(panel.table.rowCount())]
        # wait for both by name: a local worker replaced by an earlier test of this module may still be listed
        qtbot.waitUntil(lambda: {row[2] for row in rows()} >= {"local", endpoint}, timeout=10_000)
        kinds = {row[2]: row[1] for row in rows()}
        assert kinds["local"] == "local" and kinds[endpoint] == "remote"
        status = services.executor.status()
        assert all(w.blocks_per_s >= 0 for w in status.workers)
        kill_worker(worker)
        qtbot.waitUntil(lambda: any(endpoint == row[2] and "lost" in panel.table.item(r, 4).text()
                                    for r, row in enumerate(rows())), timeout=15_000)
        lost = next(panel.table.item(r, 4).text() for r, row in enumerate(rows()) if row[2] == endpoint)
        assert "silent for" in lost
    finally:
        kill_worker(worker)
        services.remove_remote_worker(endpoint)


def test_a_key_allowed_in_the_dialog_is_remembered_for_the_next_run(qtbot, window, services):
    from backend.distributed.security import KeyStore

    key = b"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
    dialog = window.workers_panel.open_dialog()
    dialog.allow_key.setText(key.decode())
    dialog.allow_worker()
    assert key in KeyStore(services.settings.config_dir).authorized("worker")


def test_one_process_is_singular_and_the_users_column_widths_stay_between_polls(qtbot, window):
    from backend.distributed.executor import ExecutorStatus, WorkerStatus
    from ilastik_desktop._qt.panels.workers import workers_summary

    one = WorkerStatus("h", "tcp://h:1", 1, "idle")
    assert workers_summary(ExecutorStatus("zmq", None, (one,))) == "workers: 1 (1 process), queue 0"
    two = ExecutorStatus("zmq", None, (one, WorkerStatus("g", "tcp://g:1", 3, "busy")))
    assert workers_summary(two) == "workers: 2 (4 processes), queue 0"
    panel = window.workers_panel
    qtbot.waitUntil(lambda: panel.table.rowCount() > 0, timeout=15_000)
    header = panel.table.horizontalHeader()
    header.resizeSection(0, 333)  # as a user drags the column's edge
    for _ in range(2):  # the table is refilled every poll
        with qtbot.waitSignal(window.status_timer.timeout, timeout=10_000):
            pass
    assert header.sectionSize(0) == 333  # every poll fitted the columns to their contents again before


def test_a_first_start_says_the_local_workers_compile_the_kernels(monkeypatch, tmp_path):
    from backend.distributed.executor import ExecutorStatus
    from ilastik_desktop._qt.panels.workers import workers_summary
    from ilastik_desktop.runtime import services as services_module
    from ilastik_desktop.runtime.settings import ComputeSettings

    monkeypatch.setattr(services_module, "kernels_compiled", lambda: False)  # nothing shipped or cached fits
    with services_module.Services(ComputeSettings(workers=1)) as first_start:
        assert first_start.compiling_kernels
    waiting = ExecutorStatus("zmq", None, no_workers_s=12, queued=3)
    assert workers_summary(waiting, True) == ("starting the local workers: first start, compiling the compute "
                                              "kernels once (12 s; queue 3)")
    assert workers_summary(waiting, False).startswith("no workers for 12 s: blocks wait (queue 3)")
