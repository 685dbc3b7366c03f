"""The object-under-the-mouse controller, without Qt: its line, computed on its own thread, kept per frame."""

from __future__ import annotations

import threading

import numpy as np

from backend.compute.threshold import ThresholdSettings
from backend.io.sources.arrays import ArraySource
from backend.service.gateway import Gateway, GatewayConfig
from ilastik_desktop.runtime.object_info import ObjectInfo
from tests.fakes import FakeCache, FakeExecutor, FakePipeline
from tests.helpers import wait_for


def test_the_line_says_computing_then_the_features_and_clears_off_objects():
    raw = np.arange(2 * 12 * 10, dtype=np.uint16).reshape(2, 12, 10)  # t, y, x: every pixel in the object
    pipeline = FakePipeline("objects")
    executor = FakeExecutor(auto=True)
    gateway = Gateway(ArraySource(raw, "tyx"), pipeline, executor, FakeCache(), GatewayConfig((1, 1, 5, 4)))
    lines, threads = [], []

    def post(function, *args):
        threads.append(threading.current_thread())
        function(*args)

    info = ObjectInfo(gateway, post)
    info.text_changed.connect(lines.append)
    settings = ThresholdSettings(low=pipeline.value() / 2, min_size=1, sigmas=(0.0, 0.0, 0.0))
    try:
        info.point(1, 1, settings)
        assert lines == ["object 1: computing its features..."]
        expected = f"object 1: 120 px, mean {raw[1].mean():.6g}, bbox x 0-9 y 0-11"
        wait_for(lambda: lines[-1] == expected, 30, message=lambda: repr(lines))
        assert threads and threading.main_thread() not in threads  # computed and posted from its own thread
        info.point(None, 0, settings)
        assert lines[-1] == ""
        info.point(1, 1, settings)  # kept: said at once
        assert lines[-1] == expected
        info.close()
        info.point(0, 1, settings)
        assert lines[-1] == ""
    finally:
        info.close()
        gateway.close()
        executor.close()
