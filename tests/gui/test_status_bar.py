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
