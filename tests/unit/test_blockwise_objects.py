"""Objects labelled block by block are bit for bit the objects ``threshold_frame`` labels in one piece."""

import dataclasses
import os
import threading

import numpy as np
import pytest
from scipy import ndimage

from backend.compute import object_blocks
from backend.compute.filters import Patch
from backend.compute.geometry import Roi
from backend.compute.object_blocks import block_boxes, block_inputs, halo_box, label_dtype, smoothing_halo
from backend.compute.pipeline import BlockTask
from backend.compute.threshold import ThresholdSettings, smooth, threshold_frame
from backend.errors import TransientError
from backend.io.dataset import open_lane
from backend.io.project import open_project
from backend.io.project_pipeline import build_pipeline
from backend.service.blockwise_objects import FrameJob, label_frame_blockwise

SIGMAS = [(0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.7, 1.6, 2.3), (1.0, 0.05, 1.0)]  # the last one: no smoothing


class Frame:
    """A frame in memory behind ``read_box``/``write_box``, counting reads in flight."""

    def __init__(self, probabilities: np.ndarray, fail_at: tuple[int, int, int] | None = None):
        self.probabilities = probabilities
        self.fail_at = fail_at
        self.labels = None
        self.written = []
        self.reading = 0
        self.most_reading = 0
        self.lock = threading.Lock()

    def read_box(self, start, stop):
        with self.lock:
            self.reading += 1
            self.most_reading = max(self.most_reading, self.reading)
        try:
            if start == self.fail_at:
                raise OSError(f"block at {start} is unreadable")
            return self.probabilities[tuple(slice(a, b) for a, b in zip(start, stop))]
        finally:
            with self.lock:
                self.reading -= 1

    def write_box(self, start, labels):
        if self.labels is None:
            self.labels = np.zeros(self.probabilities.shape[:3], labels.dtype)
        self.labels[tuple(slice(a, a + n) for a, n in zip(start, labels.shape))] = labels
        self.written.append(start)


def box_slices(box):
    return tuple(slice(a, b) for a, b in zip(*box))


def blockwise(probabilities, settings, **options):
    frame = Frame(probabilities)
    result = label_frame_blockwise(frame.read_box, probabilities.shape[:3], settings, frame.write_box, **options)
    return result, frame.labels


def objects_in_several_blocks(labels: np.ndarray, block_shape) -> int:
    """How many objects have voxels in more than one block."""
    z, y, x = np.indices(labels.shape)
    block = ((z // block_shape[0]) * 1000 + y // block_shape[1]) * 1000 + x // block_shape[2]
    inside = labels > 0
    pairs = np.unique(np.stack([labels[inside].astype(np.int64), block[inside]]), axis=1)
    return int((np.bincount(pairs[0]) > 1).sum())


def random_case(seed: int):
    """Blobby probabilities (objects cross block faces, edges and corners and touch the frame border)."""
    rng = np.random.default_rng(seed)
    shape = (1, int(rng.integers(30, 70)), int(rng.integers(30, 70))) if seed % 3 == 0 else \
        tuple(int(n) for n in rng.integers((6, 18, 18), (16, 40, 40)))
    channels = int(rng.integers(2, 4))
    noise = rng.random(shape + (channels,))
    fields = ndimage.gaussian_filter(noise, sigma=(1.2, 1.2, 1.2, 0) if shape[0] > 1 else (0, 1.5, 1.5, 0))
    low, high = fields.min(axis=(0, 1, 2)), fields.max(axis=(0, 1, 2))
    probabilities = ((fields - low) / (high - low)).astype(np.float32)
    hysteresis = seed % 2 == 1
    core_channel = int(rng.choice([1, 0])) if hysteresis else 1
    sigmas = SIGMAS[seed % 4]
    core = smooth(probabilities[..., core_channel], sigmas)
    final = smooth(probabilities[..., 1], sigmas) + (core if core_channel != 1 else 0)
    settings = ThresholdSettings(  # thresholds at quantiles: many objects of all sizes, few cores
        method=int(hysteresis), min_size=int(rng.integers(1, 12)), max_size=int(rng.choice([60, 400, 1_000_000])),
        low=float(np.quantile(final, rng.uniform(0.6, 0.8))), high=float(np.quantile(core, rng.uniform(0.9, 0.97))),
        sigmas=sigmas, channel=1, core_channel=core_channel, relabel=bool(seed % 4 in (1, 2)))
    block_shape = tuple(int(n) for n in rng.integers((1, 4, 4), (6, 17, 17)))
    return probabilities, settings, block_shape


def test_blockwise_equals_the_whole_frame_on_random_volumes():
    seen = dict.fromkeys(("several objects", "gaps", "crossing", "border", "2D", "3D", "hysteresis drops",
                          "other core", "relabel"), 0)
    for seed in range(20):
        probabilities, settings, block_shape = random_case(seed)
        expected = threshold_frame(probabilities, settings)
        result, labels = blockwise(probabilities, settings, block_shape=block_shape, threads=2)
        assert labels.dtype == expected.dtype == result.dtype, seed
        assert np.array_equal(labels, expected), f"seed {seed}: {settings}, blocks {block_shape}"
        seen["several objects"] += result.object_count > 1
        assert result.max_id == expected.max() and result.object_count == np.count_nonzero(np.unique(expected))
        seen["gaps"] += result.max_id > result.object_count
        seen["crossing"] += objects_in_several_blocks(labels, block_shape) > 0
        seen["border"] += any(edge.any() for edge in (labels[:, 0], labels[:, -1], labels[..., 0], labels[..., -1]))
        seen["2D" if probabilities.shape[0] == 1 else "3D"] += 1
        seen["relabel"] += settings.relabel
        if settings.method == 1:
            simple = threshold_frame(probabilities, ThresholdSettings(**{**settings.__dict__, "method": 0}))
            seen["hysteresis drops"] += (simple > 0).sum() > (expected > 0).sum()
            seen["other core"] += settings.core_channel != settings.channel
    assert all(count >= 2 for count in seen.values()) and seen["several objects"] >= 15, seen


@pytest.mark.parametrize("sigmas, expected_halo", [(SIGMAS[1], (2, 2, 2)), (SIGMAS[2], (1, 3, 5))])
def test_a_block_is_smoothed_bit_for_bit_as_the_whole_frame(sigmas, expected_halo):
    rng = np.random.default_rng(5)
    probabilities = rng.random((9, 23, 31, 1)).astype(np.float32)
    whole = smooth(probabilities[..., 0], sigmas)
    settings = ThresholdSettings(sigmas=sigmas)
    halo = smoothing_halo(probabilities.shape[:3], sigmas)
    assert halo == expected_halo  # vigra's radius: int(2 * sigma + 0.5)
    for box in block_boxes(probabilities.shape[:3], (4, 7, 10)).values():
        start, stop = halo_box(box, halo, probabilities.shape[:3])
        data = probabilities[tuple(slice(a, b) for a, b in zip(start, stop))]
        block, _ = block_inputs(data, start, box, probabilities.shape[:3], settings)
        assert np.array_equal(block, whole[tuple(slice(a, b) for a, b in zip(*box))])
    with pytest.raises(ValueError, match="lacks halo"):  # the halo is needed: the check is not vacuous
        Patch(probabilities[2:5, ..., 0].copy(), (2, 0, 0), probabilities.shape[:3]).separable(
            {0: np.ones(5) / 5}, ((3, 4), (0, 23), (0, 31)))


def test_an_object_through_every_block_and_corner_touching_blocks():
    probabilities = np.zeros((6, 12, 12, 1), np.float32)
    probabilities[:, 5, :] = probabilities[:, :, 5] = 1  # a cross through every block
    probabilities[2, 3, 3] = probabilities[3, 2, 2] = 1  # corner neighbours across a block corner: not joined
    settings = ThresholdSettings(min_size=1, sigmas=(0, 0, 0))
    expected = threshold_frame(probabilities, settings)
    result, labels = blockwise(probabilities, settings, block_shape=(3, 3, 3))
    assert np.array_equal(labels, expected) and result.object_count == 3


def test_2d_frame_default_block_shape_and_progress():
    probabilities = random_case(0)[0]
    settings = ThresholdSettings(min_size=3, sigmas=(1, 1, 1), channel=1)
    ticks = []
    frame = Frame(probabilities)
    result = label_frame_blockwise(frame.read_box, probabilities.shape[:3], settings, frame.write_box,
                                   progress=lambda done, total: ticks.append((done, total)))
    assert result.block_shape == (1, 2048, 2048) and result.blocks == 1
    assert np.array_equal(frame.labels, threshold_frame(probabilities, settings))
    assert ticks == [(1, 2), (2, 2)]


def test_reads_in_flight_are_bounded_by_the_threads():
    probabilities = random_case(1)[0]
    frame = Frame(probabilities)
    label_frame_blockwise(frame.read_box, probabilities.shape[:3], ThresholdSettings(channel=1), frame.write_box,
                          block_shape=(2, 5, 5), threads=3)
    assert 1 <= frame.most_reading <= 3
    assert len(frame.written) == len(set(frame.written)) == len(block_boxes(probabilities.shape[:3], (2, 5, 5)))


def _objects_threads():
    return [t for t in threading.enumerate() if t.name.startswith("objects-block")]


def test_a_failing_block_fails_the_call_and_joins_the_threads():
    probabilities = random_case(1)[0]
    frame = Frame(probabilities, fail_at=(4, 8, 0))
    with pytest.raises(OSError, match=r"block at \(4, 8, 0\)"):
        label_frame_blockwise(frame.read_box, probabilities.shape[:3], ThresholdSettings(channel=1, sigmas=(0, 0, 0)),
                              frame.write_box, block_shape=(2, 4, 4))
    assert frame.written == [] and _objects_threads() == []

    def refuse(start, labels):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        label_frame_blockwise(Frame(probabilities).read_box, probabilities.shape[:3], ThresholdSettings(channel=1),
                              refuse, block_shape=(2, 4, 4))
    assert _objects_threads() == []
    with pytest.raises(ValueError, match="channel 7 does not exist"):
        label_frame_blockwise(frame.read_box, probabilities.shape[:3], ThresholdSettings(channel=7), refuse)
    assert _objects_threads() == []


def test_ids_beyond_uint32_switch_the_labels_to_uint64(monkeypatch):
    assert label_dtype(2 ** 32 - 1) == np.uint32 and label_dtype(2 ** 32) == np.uint64
    probabilities, settings, block_shape = random_case(4)
    expected = threshold_frame(probabilities, settings)
    assert expected.max() > 3
    monkeypatch.setattr(object_blocks, "UINT32_LIMIT", 3)  # as if the frame had more than 2**32 - 1 components
    result, labels = blockwise(probabilities, settings, block_shape=block_shape)
    assert result.dtype == labels.dtype == np.uint64 and result.max_id == expected.max()
    assert np.array_equal(labels, expected)


def _project_probabilities(data_dir, project, raw_data=None):
    """The whole image's probabilities as our pipeline computes them (one block, no halo needed)."""
    p = open_project(os.path.join(data_dir, *project))
    source = open_lane(p, raw_data=raw_data and os.path.join(data_dir, *raw_data))
    _, z, y, x = source.spatial_shape
    raw = source.read(Roi((0, 0, 0, 0), (1, z, y, x)))[0]
    pipeline = build_pipeline(p, source.channels, z > 1)
    task = BlockTask("k", "Probabilities", raw, (0, 0, 0), (z, y, x), ((0, z), (0, y), (0, x)), pipeline.fingerprint())
    return pipeline.run(task)


@pytest.mark.parametrize("project, raw_data, block_shape", [
    (("seed", "pc.ilp"), ("seed", "raw.h5/exported_data"), (1, 50, 64)),
    (("ilastik-api", "PixelClass3D.ilp"), None, (20, 24, 40)),
])
def test_shared_projects_blockwise_equal_the_whole_frame(data_dir, project, raw_data, block_shape):
    probabilities = _project_probabilities(data_dir, project, raw_data)
    objects = (ThresholdSettings(channel=0, low=0.7, min_size=5),
               ThresholdSettings(method=1, channel=0, core_channel=0, high=0.9, low=0.5, min_size=5, relabel=True))
    # two classes' probabilities sum to about 1: the sum of two channels is thresholded at rounding level
    rounding = ThresholdSettings(method=1, channel=1, core_channel=0, high=0.9, low=1.0, min_size=1,
                                 sigmas=(1.0, 2.0, 2.0))
    for settings in objects + (rounding,):
        expected = threshold_frame(probabilities, settings)
        result, labels = blockwise(probabilities, settings, block_shape=block_shape)
        assert np.array_equal(labels, expected), settings
        assert result.max_id == expected.max() and (result.object_count > 1 or settings is rounding)


def test_a_frame_job_hands_out_each_blocks_labels_and_fails_them_all_on_an_error():
    probabilities, settings, _ = random_case(2)
    expected = threshold_frame(probabilities, settings)
    ended = []
    job = FrameJob(Frame(probabilities).read_box, probabilities.shape[:3], settings, (4, 16, 16),
                   on_end=ended.append)
    asked_before = job.block((4, 16, 0))
    job.start().join(timeout=30)
    assert ended == [job]
    for start, stop in block_boxes(probabilities.shape[:3], (4, 16, 16)).values():
        labels = (asked_before if start == (4, 16, 0) else job.block(start)).result(timeout=0)
        assert labels.dtype == np.uint32 and np.array_equal(labels[..., 0], expected[box_slices((start, stop))])
    with pytest.raises(TransientError, match="handed over already"):  # the job kept no copy of a block it handed over
        job.block((4, 16, 0)).result(timeout=0)
    with pytest.raises(ValueError, match="not the start of a block"):
        job.block((1, 0, 0))
    broken = FrameJob(Frame(probabilities, fail_at=(0, 0, 0)).read_box, probabilities.shape[:3],
                      dataclasses.replace(settings, sigmas=(0, 0, 0)), (4, 16, 16)).start()
    broken.join(timeout=30)
    with pytest.raises(OSError, match="unreadable"):
        broken.block((4, 16, 0)).result(timeout=0)
