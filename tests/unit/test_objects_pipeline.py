"""The objects pipeline on the wire: settings as JSON, summaries and lookup tables checked as untrusted input."""

import dataclasses

import numpy as np
import pytest

from backend.compute.object_blocks import block_boxes, block_labels, halo_box, smoothing_halo, summarise_block
from backend.compute.objects_pipeline import (
    LABELS,
    SUMMARY,
    ObjectsPipeline,
    load_pipeline,
    pack_summary,
    pipeline_from_message,
    unpack_summary,
)
from backend.compute.pipeline import BlockTask
from backend.compute.threshold import ThresholdSettings
from backend.distributed.protocol import ProtocolError, decode, encode, task_fields, task_from_message, task_message
from tests.unit.test_blockwise_objects import random_case

SETTINGS = ThresholdSettings(method=1, min_size=3, max_size=500, low=0.4, high=0.7, sigmas=(0.7, 1.6, 2.3),
                             channel=1, core_channel=0, relabel=True)


def a_block(seed: int = 1):
    probabilities, settings, block_shape = random_case(seed)
    frame = probabilities.shape[:3]
    index, box = list(block_boxes(frame, block_shape).items())[4]
    start, stop = halo_box(box, smoothing_halo(frame, settings.sigmas), frame)
    data = probabilities[tuple(slice(a, b) for a, b in zip(start, stop))]
    return data, start, index, box, frame, settings


def test_the_pipeline_travels_as_json_and_is_loaded_from_its_file(tmp_path):
    pipeline = ObjectsPipeline(SETTINGS)
    header, arrays = pipeline.to_message()
    assert arrays == [] and pipeline_from_message(header, arrays) == pipeline
    assert ObjectsPipeline(dataclasses.replace(SETTINGS, low=0.41)).fingerprint() != pipeline.fingerprint()
    pipeline.save(str(tmp_path / "p.npz"))
    assert load_pipeline(str(tmp_path / "p.npz")) == pipeline
    for bad in ({"method": 2}, {"sigmas": [1.0, 1.0]}, {"min_size": -1}, {"low": "0.5"}, {"sigmas": [1, 1, 1e9]}):
        with pytest.raises(ValueError):
            pipeline_from_message({"objects": {**header["objects"], **bad}}, [])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_summary_packed_by_a_worker_unpacks_to_the_same_summary(seed):
    data, start, index, box, frame, settings = a_block(seed)
    summary = summarise_block(index, data, start, box, frame, settings)
    task = BlockTask("k", SUMMARY, data, start, frame, tuple(zip(*box)), "p")
    packed = ObjectsPipeline(settings).run(task)
    again = unpack_summary(packed, index, box, frame, settings.method == 1)
    assert np.array_equal(packed, pack_summary(summary)) and ObjectsPipeline(settings).accepts(task, packed)
    for mask, other in ((summary.low, again.low), (summary.core, again.core)):
        if mask is None:
            assert other is None
            continue
        assert np.array_equal(mask.sizes, other.sizes) and np.array_equal(mask.first, other.first)
        assert mask.faces.keys() == other.faces.keys()
        assert all(np.array_equal(mask.faces[f], other.faces[f]) for f in mask.faces)
    assert summary.pairs is None or np.array_equal(summary.pairs, again.pairs)


def test_a_malformed_summary_is_refused():
    data, start, index, box, frame, settings = a_block(1)
    task = BlockTask("k", SUMMARY, data, start, frame, tuple(zip(*box)), "p")
    pipeline = ObjectsPipeline(settings)
    packed = pipeline.run(task)
    low = int(packed[1])
    assert low > 1
    first_face_value = 4 + 2 * low

    def changed(at, value):
        bad = packed.copy()
        bad[at] = value
        return bad

    for bad in (packed[:-1], packed.astype(np.int32), changed(0, 0), changed(1, 10 ** 9), changed(4, 0),
                changed(4 + low, int(np.prod(frame))), changed(first_face_value, low + 1), packed[None]):
        with pytest.raises(ValueError):
            unpack_summary(bad, index, box, frame, True)
        assert not pipeline.accepts(task, bad)


def test_a_labels_task_carries_its_lookup_table_and_a_bad_one_is_refused():
    data, start, index, box, frame, settings = a_block(1)
    voxels = int(np.prod([b - a for a, b in zip(*box)]))
    _, count = block_labels(data, start, box, frame, settings)
    lookup = np.arange(voxels + 2, dtype=np.uint64) * 3
    task = BlockTask("k", LABELS, data, start, frame, tuple(zip(*box)), "p", lookup=lookup[:count + 1])
    decoded = task_from_message(decode(task_message(task)))
    assert np.array_equal(decoded.lookup, task.lookup) and decoded.lookup.dtype == np.uint64
    for bad in (lookup[:count + 1].astype(np.float32), lookup, lookup[:0], lookup[:4].reshape(2, 2)):
        with pytest.raises(ProtocolError, match="lookup table"):
            task_from_message(decode(encode("TASK", task_fields(task), [data, bad])))
    with pytest.raises(ProtocolError):
        task_from_message(decode(encode("TASK", task_fields(task), [data, lookup[:5], lookup[:5]])))
    labels = ObjectsPipeline(settings).run(decoded)
    assert count > 1 and set(np.unique(labels)) == set(range(0, 3 * count + 1, 3))
    assert labels.dtype == np.uint64 and labels.shape == tuple(b - a for a, b in zip(*box)) + (1,)
    assert ObjectsPipeline(settings).accepts(decoded, labels)
    assert not ObjectsPipeline(settings).accepts(decoded, labels.astype(np.uint32))
