"""The desktop app offscreen (pytest-qt): real projects, real workers, overlays equal to the export."""

import functools
import os
import time

import numpy as np
import pytest
from PyQt5 import QtCore, QtGui

from tests.conftest import run_cli
from tests.gui.conftest import open_and_settle

pytestmark = pytest.mark.timeout(300)


def shown(window, plane, kind="Probabilities"):
    """The values the loader painted into a view, and the plane region they cover."""
    return window.loader.shown(plane, kind)


def export(tmp_path, *args):
    result = run_cli("--headless", "--no-progress", "--output_format", "npy", "--output_filename_format",
                     str(tmp_path / "export"), "--workers", "1", *args)
    assert result.returncode == 0, result.stderr
    return np.load(tmp_path / "export.npy")


def test_seed_project_overlay_equals_the_headless_export(qtbot, window, data_dir, tmp_path):
    seed = os.path.join(data_dir, "seed")
    raw = os.path.join(seed, "raw.h5/exported_data")
    open_and_settle(qtbot, window, os.path.join(seed, "pc.ilp"), raw)
    values, roi = shown(window, "xy")
    expected = export(tmp_path, "--project", os.path.join(seed, "pc.ilp"), "--raw_data", raw)
    expected = expected.reshape(window.model.shape[2:] + (2,))
    assert np.array_equal(values, expected[roi.start[2]:roi.stop[2], roi.start[3]:roi.stop[3]])
    assert [v.plane for v in window.views] == ["xy"]


def test_3d_project_shows_three_views_and_equals_the_export(qtbot, window, data_dir, tmp_path):
    api = os.path.join(data_dir, "ilastik-api")
    open_and_settle(qtbot, window, os.path.join(api, "PixelClass3D.ilp"))
    assert [v.plane for v in window.views] == ["xy", "yz", "xz"]
    expected = export(tmp_path, "--project", os.path.join(api, "PixelClass3D.ilp"))
    z, y, x = window.model.position[1:]
    assert np.array_equal(shown(window, "xy")[0], expected[z])
    assert np.array_equal(shown(window, "xz")[0], expected[:, y])
    assert np.array_equal(shown(window, "yz")[0], expected[:, :, x].swapaxes(0, 1))  # rows y, columns z
    window.loader.step("z", 5)  # scrolling moves the plane and refills it
    qtbot.waitUntil(window.loader.is_settled, timeout=60_000)
    assert np.array_equal(shown(window, "xy")[0], expected[z + 5])
    window.views[2].hovered.emit(3, 7)  # the mouse over the xz view at z 3, x 7
    names = window.document.project.label_names
    readout = window.cursor_label.text()
    assert f"x 7  y {y}  z 3" in readout
    assert "  ".join(f"{n} {p:.2f}" for n, p in zip(names, expected[3, y, 7])) in readout
    window.views[2].hovered.emit(-1, -1)
    assert window.cursor_label.text() == ""


def test_time_series_follows_the_time_slider(qtbot, window, data_dir):
    series = os.path.join(data_dir, "ilastik-timeseries", "mitocheckPixelClassification.ilp")
    open_and_settle(qtbot, window, series)
    raw, _ = shown(window, "xy", "Raw")  # uint16: the display range follows the data, not 0..65535
    low, high = window.model.contrast
    assert raw.min() <= low < high <= raw.max() and high < 65535
    first = shown(window, "xy")[0].copy()
    window.time_slider.setValue(5)
    qtbot.waitUntil(window.loader.is_settled, timeout=60_000)
    later, roi = shown(window, "xy")
    assert roi.start[0] == 5 and later.std() > 0.01 and not np.array_equal(first, later)


def test_threshold_panel_changes_the_objects(qtbot, window, data_dir):
    api = os.path.join(data_dir, "ilastik-api")
    open_and_settle(qtbot, window, os.path.join(api, "PixelClass3D.ilp"))
    window.model.set_layer("Objects", visible=True)
    qtbot.waitUntil(lambda: ("xy", "Objects") in window.loader.slots and window.loader.is_settled(),
                    timeout=60_000)
    before = shown(window, "xy", "Objects")[0].copy()
    panel = window.threshold_panel
    panel.channel.setCurrentIndex(1 - panel.channel.currentIndex())
    panel.low.setValue(0.3 if panel.low.value() > 0.4 else 0.7)
    qtbot.waitUntil(lambda: window.loader.is_settled() and not np.array_equal(
        shown(window, "xy", "Objects")[0], before), timeout=60_000)
    assert shown(window, "xy", "Objects")[0].max() >= 1


def test_event_loop_never_stalls_while_workers_compute(qtbot, window, data_dir):
    gaps, last = [], [time.perf_counter()]

    def tick():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    api = os.path.join(data_dir, "ilastik-api")
    open_and_settle(qtbot, window, os.path.join(api, "PixelClass3D.ilp"))  # building the views is not measured
    timer = QtCore.QTimer(interval=10)
    timer.timeout.connect(tick)
    last[0] = time.perf_counter()
    timer.start()

    def stepped(ticks: int) -> bool:
        """The view asked for the plane it is on, and the timer ticked five times since (a user's pace: 50 ms)."""
        asked = window.loader.slots[("xy", "Probabilities")].roi.start[1] == window.model.position[1]
        return asked and len(gaps) >= ticks + 5

    for _ in range(6):  # browse while blocks compute
        window.loader.step("z", 7)
        qtbot.waitUntil(functools.partial(stepped, len(gaps)), timeout=10_000)
    qtbot.waitUntil(window.loader.is_settled, timeout=120_000)
    timer.stop()
    assert len(gaps) > 20
    assert max(gaps[1:]) < 0.1, f"longest event-loop stall {max(gaps[1:]) * 1000:.0f} ms"


def test_missing_raw_data_is_reported_not_raised(qtbot, window, data_dir):
    messages = []
    window.failed.connect(messages.append)
    window.open_project(os.path.join(data_dir, "seed", "pc.ilp"))  # its raw path does not exist here
    qtbot.waitUntil(lambda: bool(messages), timeout=30_000)
    assert "not found" in messages[0]


def test_screenshot_command(data_dir, tmp_path):
    seed = os.path.join(data_dir, "seed")
    out = tmp_path / "shot.png"
    result = run_cli("--screenshot", str(out), "--raw_data", os.path.join(seed, "raw.h5/exported_data"),
                     os.path.join(seed, "pc.ilp"), timeout=300)
    assert result.returncode == 0, result.stderr
    image = QtGui.QImage(str(out))
    assert (image.width(), image.height()) == (1600, 1000)


def test_connect_dialog_adds_a_listening_worker_and_reports_a_wrong_key(qtbot, window, services, tmp_path):
    from tests.integration.test_curve import worker_key
    from tests.integration.test_zmq import free_port
    from tests.integration.workers import kill_worker, start_worker, wait_listening

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = start_worker("--listen", endpoint, "--gateway-key", services.identity.public.decode(), "--config-dir",
                        str(tmp_path / "worker"))
    try:
        wait_listening(endpoint)
        dialog = window.workers_panel.open_dialog()
        dialog.endpoint.setText(endpoint)
        dialog.key.setText(worker_key(tmp_path / "stranger").decode())  # not this worker's key
        with qtbot.waitSignal(dialog.finished_check, timeout=30_000) as wrong:
            dialog.connect_button.click()
        assert wrong.args[0] is False and "handshake failed" in wrong.args[1] and "--print-key" in wrong.args[1]
        dialog.key.setText(worker_key(tmp_path / "worker").decode())
        with qtbot.waitSignal(dialog.finished_check, timeout=30_000) as right:
            dialog.connect_button.click()
        assert right.args[0] is True, right.args[1]
        qtbot.waitUntil(lambda: any(window.workers_panel.table.item(r, 2).text() == endpoint
                                    for r in range(window.workers_panel.table.rowCount())), timeout=5_000)
        services.remove_remote_worker(endpoint)
        dialog.endpoint.setText("tcp://127.0.0.1:1")
        with qtbot.waitSignal(dialog.finished_check, timeout=30_000) as unreachable:
            dialog.connect_button.click()
        assert "unreachable" in unreachable.args[1]
    finally:
        kill_worker(proc)


def test_export_dialog_writes_what_the_view_shows_and_can_cancel(qtbot, window, data_dir, tmp_path):
    api = os.path.join(data_dir, "ilastik-api")
    open_and_settle(qtbot, window, os.path.join(api, "PixelClass3D.ilp"))
    dialog = window.open_export()
    dialog.format.setCurrentText("npy")
    dialog.path.setText(str(tmp_path / "from_dialog"))
    with qtbot.waitSignal(dialog.export_done, timeout=120_000) as finished:
        dialog.start.click()
    assert finished.args[0].endswith("from_dialog.npy"), finished.args[1]
    exported = np.load(finished.args[0])
    assert np.array_equal(exported[window.model.position[1]], shown(window, "xy")[0])
    assert dialog.progress.value() == dialog.progress.maximum() > 0
    dialog.source.setCurrentText("Features")
    dialog.path.setText(str(tmp_path / "cancelled"))
    with qtbot.waitSignal(dialog.export_done, timeout=120_000) as stopped:
        dialog.start.click()
        dialog.stop.click()
    assert stopped.args[0] == "" and "cancelled" in stopped.args[1]
    assert not any("cancelled" in name for name in os.listdir(tmp_path))  # also no hidden .cancelled.npy.partial
    dialog.close()
