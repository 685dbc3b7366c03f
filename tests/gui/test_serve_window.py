"""File > Serve over HTTP: the window's project served while it is open, through the views' own gateway."""

import io
import json
import os
import threading
import urllib.error

import numpy as np
import pytest
from PyQt5 import QtCore, QtGui, QtTest, QtWidgets

from backend.compute.threshold import ThresholdSettings
from tests.gui.conftest import open_and_settle
from tests.integration.webserver import http_get

pytestmark = pytest.mark.timeout(300)


def _start(qtbot, window, host="127.0.0.1"):
    dialog = window.open_serve()
    dialog.host.setText(host)
    dialog.port.setValue(0)
    with qtbot.waitSignal(dialog.serving, timeout=60_000) as started:
        dialog.start_button.click()
    return dialog, started.args[0]


def _refused(url: str) -> bool:
    try:
        http_get(url + "/health", timeout=5)
    except (urllib.error.URLError, ConnectionError):
        return True
    return False


def _web_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("web-server", "web_", "web-start"))]


def test_serving_the_open_project_shares_its_blocks_and_stops_with_it(qtbot, window, data_dir):
    project = os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp")
    open_and_settle(qtbot, window, project)
    dialog, base = _start(qtbot, window)
    assert window.web_label.isVisible() and window.web_label.text() == f"serving {base}"
    token = dialog.server.token  # on this machine only too, as Jupyter: the links carry it
    url = f"{base}/t/{token}"
    assert token and dialog.zarr_url() == f"{url}/zarr/0/probabilities" and f"token: {token}" in dialog.message.text()
    assert f'href="{url}/doc"' in dialog.url.text() and http_get(base + "/api/v1/info")[0] == 401
    viewer = f"{url}/viewer?lane={window.document.lane}"  # the lane on screen in a browser, with the token
    assert dialog.viewer_url() == viewer and f'<a href="{viewer}">' in dialog.viewer_link.text()
    assert dialog.viewer_link.openExternalLinks() and dialog.viewer_link.isVisible()
    assert dialog.viewer_link.toolTip().startswith(viewer + "\n")  # the whole link, however narrow the dialog
    for width in (dialog.minimumWidth(), 900):
        dialog.resize(width, dialog.height())
        qtbot.waitUntil(lambda wanted=width: dialog.width() == wanted, timeout=5_000)
        label = dialog.viewer_link
        shown = QtGui.QTextDocumentFragment.fromHtml(label.text()).toPlainText()
        right = label.mapTo(dialog, QtCore.QPoint(label.fontMetrics().horizontalAdvance(shown), 0)).x()
        assert right <= dialog.width() - 8, (width, shown, right)  # not cut off at the dialog's edge
        assert f'<a href="{viewer}">' in label.text() and (shown == viewer or "\u2026" in shown)
    QtTest.QTest.mouseClick(dialog.copy_viewer_button, QtCore.Qt.LeftButton)
    assert QtWidgets.QApplication.clipboard().text() == viewer
    status, page, _ = http_get(viewer)
    assert status == 200 and window.document.gateway.pipeline_fingerprint in page.decode()
    info = json.loads(http_get(url + "/api/v1/info")[1])
    assert info["project"] == project and info["lanes"][0]["classifier"] == window.document.gateway.pipeline_fingerprint

    shown, roi = window.loader.shown("xy", "Probabilities")  # the plane on screen, from the browser's side
    z = window.model.position[1]
    gateway = window.document.gateway
    qtbot.waitUntil(lambda: gateway.status().blocks_in_progress == 0, timeout=60_000)  # prefetch done too
    misses = gateway.status().misses
    region = (f"{url}/api/v1/lanes/0/probabilities?start={z},{roi.start[2]},{roi.start[3]}"
              f"&stop={z + 1},{roi.stop[2]},{roi.stop[3]}&format=npy")
    status, body, _ = http_get(region)
    assert status == 200 and np.array_equal(np.load(io.BytesIO(body))[0], shown)
    assert gateway.status().misses == misses + 1  # one whole block (the views ask for thin ones), on their gateway
    assert http_get(region)[1] == body and gateway.status().misses == misses + 1  # then cached

    etag = http_get(url + "/zarr/0/objects/.zattrs")[2]["ETag"]
    window.threshold_panel.changed.emit(ThresholdSettings(high=0.7))
    assert http_get(url + "/zarr/0/objects/.zattrs")[2]["ETag"] != etag  # objects follow the panel

    with qtbot.waitSignal(dialog.serving, timeout=30_000) as stopped:
        open_and_settle(qtbot, window, os.path.join(data_dir, "seed", "pc.ilp"),
                        os.path.join(data_dir, "seed", "raw.h5/exported_data"))
    assert stopped.args == [""] and not window.web_label.isVisible()
    assert dialog.viewer_link.text() == "" and not dialog.copy_viewer_button.isEnabled()
    qtbot.waitUntil(lambda: not dialog.controller.busy, timeout=30_000)
    assert _refused(base) and _web_threads() == []


def test_serving_off_loopback_needs_the_generated_token_and_ends_with_the_window(qtbot, window, data_dir):
    open_and_settle(qtbot, window, os.path.join(data_dir, "seed", "pc.ilp"),
                    os.path.join(data_dir, "seed", "raw.h5/exported_data"))
    dialog, url = _start(qtbot, window, host="0.0.0.0")
    token = dialog.server.token
    assert token and f"token: {token}" in dialog.message.text() and f"/t/{token}/" in dialog.zarr_url()
    local = url.replace(url.split("//")[1].split(":")[0], "127.0.0.1", 1)
    assert http_get(local + "/api/v1/info")[0] == 401
    assert http_get(local + "/api/v1/info", {"Authorization": f"Bearer {token}"})[0] == 200
    assert http_get(f"{local}/t/{token}/zarr/0/probabilities/0/.zarray")[0] == 200
    window.close()
    assert _refused(local) and _web_threads() == []
