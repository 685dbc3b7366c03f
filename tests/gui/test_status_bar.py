"""The status bar counts every request's blocks, not only the visible ones (an export started from the
window, prefetches, objects), so it never says "0 pending" while the workers are busy for the project."""

import re

import pytest

from backend.compute.geometry import Roi
from backend.service.gateway import BATCH
from tests.gui.conftest import open_and_settle
from tests.integration.test_executor import small_project

pytestmark = pytest.mark.timeout(300)


def _counts(window) -> tuple[int, int]:
    text = window.pending.text()
    match = re.fullmatch(r"(\d+) visible, (\d+) in all pending", text)
    assert match, text
    return int(match.group(1)), int(match.group(2))


def test_pending_counts_include_a_batch_request_of_the_open_project(qtbot, window, tmp_path):
    path, _ = small_project(tmp_path, shape=(48, 256, 256))
    open_and_settle(qtbot, window, path)
    qtbot.waitUntil(lambda: _counts(window) == (0, 0), timeout=60_000)  # the prefetch done too
    gateway = window.document.gateway
    batch = gateway.request("Probabilities", Roi((0, 0, 0, 0), (1, 48, 256, 256)), BATCH,
                            block_shape=(1, 8, 32, 32))  # 192 blocks, as an export would ask
    try:
        qtbot.waitUntil(lambda: _counts(window)[1] > 0, timeout=10_000)
        assert _counts(window)[0] == 0  # the views themselves wait for nothing
    finally:
        batch.cancel()
    qtbot.waitUntil(lambda: _counts(window) == (0, 0), timeout=60_000)


def test_the_readout_follows_scrolling_panning_and_a_new_project(qtbot, window, data_dir):
    import os

    from PyQt5 import QtCore

    api = os.path.join(data_dir, "ilastik-api", "PixelClass3D.ilp")
    open_and_settle(qtbot, window, api)
    qtbot.waitUntil(lambda: abs(window.side.width() - window.side_width) <= 10, timeout=5_000)  # laid out
    xy = window.views[0]
    mouse = xy.box.mapViewToScene(QtCore.QPointF(7.5, 3.5))
    xy.scene().sigMouseMoved.emit(mouse)  # the mouse over x 7, y 3
    z = window.model.position[1]
    assert f"x 7  y 3  z {z}" in window.cursor_label.text()
    window.loader.step("z", 5)  # scrolled with the mouse still there
    qtbot.waitUntil(window.loader.is_settled, timeout=60_000)
    values = window.loader.value_at("xy", "Probabilities", 3, 7)
    names = window.document.project.label_names
    assert f"x 7  y 3  z {z + 5}" in window.cursor_label.text()
    assert "  ".join(f"{n} {p:.2f}" for n, p in zip(names, values)) in window.cursor_label.text()
    xy.box.translateBy(x=-2)  # panned: the image moved under the mouse
    now = xy.box.mapSceneToView(mouse)
    x, y = int(now.x()), int(now.y())
    assert (x, y) != (7, 3) and f"x {x}  y {y}" in window.cursor_label.text()
    seed = os.path.join(data_dir, "seed")
    open_and_settle(qtbot, window, os.path.join(seed, "pc.ilp"), os.path.join(seed, "raw.h5/exported_data"))
    assert all(name not in window.cursor_label.text() for name in names)
