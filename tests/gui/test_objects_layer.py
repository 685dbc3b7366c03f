"""The Objects layer paints a frame's blocks of labels as they are labelled, not once the whole frame is."""

import os
import threading

import numpy as np
import pytest

from backend.compute import object_blocks
from backend.compute.threshold import ThresholdSettings
from backend.service.objects import request_frame
from tests.gui.conftest import open_and_settle
from viewer.model import OBJECTS

pytestmark = pytest.mark.timeout(300)
BLOCK = 48  # the frame (99 x 105) is labelled in 3 x 3 blocks


def test_the_objects_layer_shows_the_blocks_labelled_while_one_is_held_back(qtbot, window, data_dir, monkeypatch):
    monkeypatch.setattr("ilastik_desktop.runtime.document.default_block_shape", lambda shape: (1, 1, BLOCK, BLOCK))
    open_and_settle(qtbot, window, os.path.join(data_dir, "ilastik-timeseries", "mitocheckPixelClassification.ilp"))
    gateway = window.document.gateway
    release, reads = threading.Event(), []
    real_request = gateway.request

    def request(kind, roi, *args, **kwargs):
        """The labelling's second read (pass 2) of the frame's first block waits until the test releases it."""
        if threading.current_thread().name.startswith("objects-block"):
            reads.append(roi)
            if roi.start[2:] == (0, 0) and reads.count(roi) == 2:
                release.wait(120)
        return real_request(kind, roi, *args, **kwargs)

    monkeypatch.setattr(gateway, "request", request)
    settings = ThresholdSettings(channel=1, core_channel=1, min_size=5)
    window.loader.set_threshold(settings)
    window.model.set_layer(OBJECTS, visible=True)
    try:
        def partly_shown() -> bool:
            slot = window.loader.slots.get(("xy", OBJECTS))
            return slot is not None and slot.painted is not None and slot.painted[BLOCK:, BLOCK:].any()

        qtbot.waitUntil(partly_shown, timeout=60_000)
        slot = window.loader.slots[("xy", OBJECTS)]
        assert not slot.complete and not slot.painted[:BLOCK, :BLOCK].any()  # the held block is not there yet
        alpha = window.views[0].buffers[OBJECTS][..., 3]
        assert alpha[slot.painted].any() and not alpha[:BLOCK, :BLOCK].any()  # the others are on screen
    finally:
        release.set()
    qtbot.waitUntil(lambda: window.loader.is_complete("xy", OBJECTS), timeout=60_000)
    slot = window.loader.slots[("xy", OBJECTS)]
    assert slot.painted.all()
    labels = request_frame(gateway, 0, settings).result(timeout=60)[0, 0, ..., 0]
    assert labels.max() > 1 and np.array_equal(slot.values[..., 0], labels)


def test_a_frame_labelled_in_uint64_is_painted(qtbot, window, data_dir, monkeypatch):
    monkeypatch.setattr(object_blocks, "UINT32_LIMIT", 1)  # as if the frame had more IDs than uint32 holds
    open_and_settle(qtbot, window, os.path.join(data_dir, "ilastik-timeseries", "mitocheckPixelClassification.ilp"))
    settings = ThresholdSettings(channel=1, core_channel=1, min_size=5)
    window.loader.set_threshold(settings)
    window.model.set_layer(OBJECTS, visible=True)
    qtbot.waitUntil(lambda: window.loader.is_complete("xy", OBJECTS), timeout=60_000)
    slot = window.loader.slots[("xy", OBJECTS)]
    labels = request_frame(window.document.gateway, 0, settings).result(timeout=60)[0, 0, ..., 0]
    assert labels.dtype == slot.values.dtype == np.uint64 and labels.max() > 1
    assert np.array_equal(slot.values[..., 0], labels)
    alpha = window.views[0].buffers[OBJECTS][..., 3]
    assert np.array_equal(alpha > 0, labels > 0)  # every object on screen, the background transparent
