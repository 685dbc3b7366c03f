"""A gateway owns the labellings of its frames' objects: closing it stops and joins them; a job keeps no labels it
handed over."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import numpy as np

from backend.compute.geometry import Roi
from backend.compute.object_blocks import block_boxes
from backend.compute.threshold import ThresholdSettings
from backend.io.sources.arrays import ArraySource
from backend.service.blockwise_objects import FrameJob
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


def test_a_job_keeps_no_labels_of_the_blocks_it_handed_over():
    probabilities = np.full((4, 16, 16, 1), 0.9, np.float32)
    last = ((2, 8, 8), (4, 16, 16))
    release, reads = threading.Event(), []

    def read_box(start, stop):
        reads.append((tuple(start), tuple(stop)))
        if reads.count(last) == 2:  # pass 2 of the last block waits
            release.wait(30)
        return probabilities[tuple(slice(a, b) for a, b in zip(start, stop))]

    settings = ThresholdSettings(low=0.5, min_size=1, sigmas=(0.0, 0.0, 0.0))
    job = FrameJob(read_box, (4, 16, 16), settings, (2, 8, 8), threads=1)
    delivered = []
    for start, _ in block_boxes((4, 16, 16), (2, 8, 8)).values():
        job.block(start).add_done_callback(lambda done: delivered.append(weakref.ref(done.result())))
    job.start()
    try:
        wait_for(lambda: len(delivered) == 7, 30, message="seven of the eight blocks are written")
        gc.collect()
        assert job.is_alive() and all(labels() is None for labels in delivered)  # nothing kept by the job
        again = job.block((0, 0, 0))  # asked again while the job runs: said, not a future that never ends
        assert "handed over already" in str(again.exception(timeout=1))
    finally:
        release.set()
        job.join(30)
    assert not job.is_alive() and len(delivered) == 8
