"""A gateway owns the labellings of its frames' objects: closing it stops and joins them."""

from __future__ import annotations

import threading
import time

import numpy as np

from backend.compute.geometry import Roi
from backend.compute.threshold import ThresholdSettings
from backend.io.sources.arrays import ArraySource
from backend.service.gateway import Gateway, GatewayConfig
from backend.service.objects import request_objects
from tests.fakes import FakeCache, FakeExecutor, FakePipeline
from tests.helpers import wait_for


def labelling_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("objects-")]


def test_closing_the_gateway_stops_and_joins_a_frame_labelled_half_way(monkeypatch):
    leaked = []
    monkeypatch.setattr(threading, "excepthook", leaked.append)
    raw = np.zeros((1, 8, 32, 32), np.uint16)
    pipeline = FakePipeline("objects")
    executor = FakeExecutor()  # probability blocks are computed only when the test says so
    gateway = Gateway(ArraySource(raw, "tzyx"), pipeline, executor, FakeCache(), GatewayConfig((1, 2, 8, 8)))
    closed = False
    try:
        settings = ThresholdSettings(low=pipeline.value() / 2, min_size=1, sigmas=(1.0, 1.0, 1.0))
        request = request_objects(gateway, Roi((0, 0, 0, 0), (1, 2, 8, 8)), settings)  # one of 64 blocks
        assert len(gateway.frame_jobs.running()) == 1
        for _ in range(6):  # pass 1 gets a few of the frame's probability blocks, then waits for the others
            wait_for(lambda: executor.pending(), 10, message="the labelling asks for probability blocks")
            executor.finish(executor.pending()[0])
        assert labelling_threads() and not request.future.done()
        started = time.monotonic()
        gateway.close()
        closed = True
        assert time.monotonic() - started < gateway.frame_jobs.stop_s
        assert not labelling_threads() and not gateway.frame_jobs.running()  # joined by close()
        assert request.future.exception(timeout=10) is not None  # its blocks failed, nobody waits for ever
        assert not leaked
    finally:
        if not closed:
            gateway.close()
        executor.close()
