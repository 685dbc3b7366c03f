"""The Objects layer: thresholded, labelled objects of whole time frames, built on the gateway.

A frame's probabilities come through the gateway (so their blocks are cached and shared); the labels
are cached under a key that includes the thresholding parameters.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np

from backend.cache.block_cache import block_key
from backend.compute.geometry import Roi
from backend.compute.threshold import ThresholdSettings, settings_fingerprint, threshold_frame, unsupported_method
from backend.errors import UserError
from backend.service.gateway import Gateway
from backend.service.snapshot import PipelineSnapshot

OBJECTS = "Objects"


def frame_roi(gateway: Gateway, t: int) -> Roi:
    """The whole of time step ``t``."""
    _, z, y, x = gateway.source.spatial_shape
    return Roi((t, 0, 0, 0), (t + 1, z, y, x))


def objects_key(gateway: Gateway, t: int, settings: ThresholdSettings, snapshot: PipelineSnapshot | None = None) -> str:
    """Cache key of a frame's labels: data, classifier, parameters and frame."""
    snapshot = snapshot or gateway.snapshot
    pipeline = f"{snapshot.fingerprint}.{settings_fingerprint(settings)}"
    return block_key(snapshot.data_fingerprint, pipeline, OBJECTS, frame_roi(gateway, t))


def request_objects(gateway: Gateway, roi: Roi, settings: ThresholdSettings, priority: int = 0) -> Future:
    """A future of the uint32 labels ``(t, z, y, x, 1)`` of ``roi``; each frame is labelled as a whole."""
    frames = [request_frame(gateway, t, settings, priority) for t in range(roi.start[0], roi.stop[0])]
    result: Future = Future()
    out = np.zeros(roi.shape + (1,), np.uint32)
    remaining = [len(frames)]
    lock = threading.Lock()

    def collect(t: int, future: Future) -> None:
        if future.exception() is not None:
            if not result.done():
                result.set_exception(future.exception())
            return
        local = Roi((0,) + roi.start[1:], (1,) + roi.stop[1:])
        with lock:
            out[t - roi.start[0]] = future.result()[local.slices()][0]
            remaining[0] -= 1
            done = remaining[0] == 0
        if done and not result.done():
            result.set_result(out)

    for t, frame in zip(range(roi.start[0], roi.stop[0]), frames):
        frame.add_done_callback(lambda f, t=t: collect(t, f))
    return result


def request_frame(gateway: Gateway, t: int, settings: ThresholdSettings, priority: int = 0,
                  snapshot: PipelineSnapshot | None = None) -> Future:
    """A future of one whole frame's labels ``(1, z, y, x, 1)``, labelled once however many ask (cached); the
    key and the probabilities come from one snapshot (default: the gateway's current one). UserError at once for
    a thresholding method that is not computed here."""
    reason = unsupported_method(settings)
    if reason is not None:
        raise UserError(reason)
    frame = frame_roi(gateway, t)
    snapshot = snapshot or gateway.snapshot

    def produce() -> Future:
        labelled: Future = Future()
        probabilities = gateway.request("Probabilities", frame, priority, snapshot=snapshot)

        def label(future: Future) -> None:
            try:
                labelled.set_result(threshold_frame(future.result()[0], settings)[..., None])
            except Exception as exc:  # a failed probability block or bad parameters
                labelled.set_exception(exc)

        def hand_over(future: Future) -> None:
            try:
                gateway.run_local(label, future)
            except RuntimeError:  # the gateway was closed meanwhile
                labelled.cancel()

        probabilities.future.add_done_callback(hand_over)
        return labelled

    key = objects_key(gateway, t, settings, snapshot)
    return gateway.request_derived(key, frame, 1, np.uint32, produce, priority).future
