"""Hostile or broken input on the wire, in the cache and in project files: dropped, counted, never fatal."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import zmq

from backend.cache.block_cache import BlockCache, block_key
from backend.cache.redis_server import EmbeddedRedis, RedisSettings
from backend.compute.forest import LEAF, CompiledForests
from backend.compute.geometry import Roi
from backend.config import ExecutorConfig
from backend.distributed.protocol import VERSION, decode, encode
from backend.distributed.worker import PROTOCOL_NAME
from backend.distributed.zmq_executor import TaskError, ZmqExecutor
from backend.errors import ProjectError
from tests.helpers import wait_for
from tests.integration.test_executor import _pipeline, _task, small_project
from tests.integration.test_gateway import gateway_on
from tests.integration.workers import ZmqWithWorkers, free_port, kill_worker, start_worker


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("hostile")), shape=(24, 96, 96))


def _header(text: str) -> bytes:
    return text.encode()


def killers() -> list[list[bytes]]:
    """Messages that used to kill a worker or the app's message thread (one per line of the issue)."""
    v = VERSION
    return [
        [_header(json.dumps({"v": v, "type": "RESULT", "arrays": [{"dtype": "<f4", "shape": [2**40, 2**40]}]})), b""],
        [_header(json.dumps({"v": v, "type": "RESULT", "arrays": [{"dtype": "<f4", "shape": [2**32, 2**32]}]})), b""],
        [_header(json.dumps({"v": v, "type": "RESULT", "arrays": [{"dtype": "<f4", "shape": [10**30]}]})), b""],
        [_header(f'{{"v": {v}, "type": "RESULT", "arrays": [{{"dtype": "<f4", "shape": [Infinity]}}]}}'), b""],
        [b"[" * 200_000],
        [_header(f'{{"v": {v}, "type": "TASK", "key": "x", "kind": "Probabilities", "start": [Infinity, 0, 0], '
                 '"image": [1, 1, 1], "target": [[0, 1], [0, 1], [0, 1]], "pipeline": "p", "arrays": []}')],
        [_header(f'{{"v": {v}, "type": "PIPELINE", "pipeline": {{"channels": Infinity}}, "arrays": []}}')],
        [_header(f'{{"v": {v}, "type": "PIPELINE", "pipeline": {{"label_count": Infinity}}, "arrays": []}}')],
        [_header(f'{{"v": {v}, "type": "READY", "processes": Infinity, "arrays": []}}')],
    ]


def _read_lines(stream, lines: list[str]) -> None:
    for line in iter(stream.readline, ""):
        lines.append(line)


@pytest.mark.timeout(180)
def test_hostile_messages_are_dropped_by_a_listening_worker_which_then_serves(project):
    path, image = project
    pipeline = _pipeline(path)
    expected = pipeline.run(_task(pipeline, image))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    worker = start_worker("--listen", endpoint)
    lines: list[str] = []
    threading.Thread(target=_read_lines, args=(worker.stderr, lines), daemon=True).start()
    peer = zmq.Context.instance().socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    try:
        peer.connect(endpoint)
        junk = killers()
        for frames in junk:
            peer.send_multipart(frames)
        # warm-up first: the worker reads nothing until its processes are ready
        wait_for(lambda: any(f"({len(junk)} so far)" in line for line in lines), 60, interval=0.05,
                 message=lambda: "".join(lines)[-2000:])
        assert worker.poll() is None
        peer.close()
        with ZmqExecutor(bind=None, connect_to=(endpoint,), config=ExecutorConfig(heartbeat_s=0.2)) as ex:
            ex.add_pipeline(pipeline)
            assert ex.wait_for_workers(1, timeout=60)
            assert np.array_equal(ex.submit(_task(pipeline, image)).result(timeout=60), expected)
    finally:
        peer.close()
        kill_worker(worker)


@pytest.mark.timeout(120)
def test_hostile_messages_are_dropped_by_the_app_which_goes_on_computing(project):
    path, image = project
    pipeline = _pipeline(path)
    expected = pipeline.run(_task(pipeline, image))
    with ZmqWithWorkers(pipeline) as ex:
        peer = zmq.Context.instance().socket(zmq.DEALER)
        peer.setsockopt(zmq.LINGER, 0)
        peer.connect(ex.address)
        try:
            for frames in killers():
                peer.send_multipart(frames)
            wait_for(lambda: ex.status().dropped_messages >= len(killers()), 20, interval=0.02,
                     message=lambda: f"too few messages dropped: {ex.status().dropped_messages}")
            assert ex.status().dropped_messages == len(killers())
            assert np.array_equal(ex.submit(_task(pipeline, image)).result(timeout=60), expected)
            assert len(ex.status().workers) == 1  # the fake READY registered nobody
        finally:
            peer.close()


@pytest.mark.timeout(60)
def test_a_result_of_the_wrong_shape_is_rejected_as_the_workers_error(project):
    path, image = project
    pipeline = _pipeline(path)
    with ZmqExecutor(config=ExecutorConfig(heartbeat_s=0.2, max_attempts=2)) as ex:
        ex.add_pipeline(pipeline)
        peer = zmq.Context.instance().socket(zmq.DEALER)
        peer.setsockopt(zmq.LINGER, 0)
        peer.connect(ex.address)
        try:
            peer.send_multipart(encode("READY", {"processes": 1, "version": PROTOCOL_NAME, "host": "liar"}))
            future = ex.submit(_task(pipeline, image))
            while not future.done() and peer.poll(5000):
                message = decode(peer.recv_multipart())
                if message.type == "TASK":
                    peer.send_multipart(encode("RESULT", {"key": message.fields["key"]},
                                               [np.zeros((1, 1, 1, 1), np.float32)]))
            with pytest.raises(TaskError, match="malformed result"):
                future.result(timeout=10)
            assert ex.status().rejected == 2 and ex.status().done == 0
        finally:
            peer.close()


@pytest.mark.timeout(120)
def test_malformed_cache_entries_are_misses_that_get_recomputed(project):
    path, image = project
    pipeline = _pipeline(path)
    with EmbeddedRedis(RedisSettings(maxmemory_mb=64)) as server, ZmqWithWorkers(pipeline) as ex:
        client = server.client()
        gateway = gateway_on(path, pipeline, ex.executor, client, (1, 24, 48, 48))
        try:
            roi = Roi((0, 0, 0, 0), (1, 24, 48, 48))
            key = block_key(gateway.data_fingerprint, gateway.pipeline_fingerprint, "Probabilities", roi)
            expected = gateway.request("Probabilities", roi).result(timeout=60)
            wrong_shape = BlockCache(client)
            for junk in (b"ILD1", b"ILD1\x00\x00\x00\x10" + b'{"shape": "abc"}', None):
                wait_for(lambda: wrong_shape.get(key) is not None, 10,  # stored just after it is delivered
                         message="the recomputed block was not stored")
                if junk is None:
                    wrong_shape.complete(key, np.zeros((1, 2, 2, 2, 2), np.float32))
                else:
                    client.set(key, junk)
                assert np.array_equal(gateway.request("Probabilities", roi).result(timeout=60), expected)
            assert gateway.status().computed == 4  # once at first, then once after each damaged entry
        finally:
            gateway.close()


def _small_forest() -> CompiledForests:
    # one tree: node 0 splits on feature 0 at 0.5, nodes 1 and 2 are leaves
    nan = np.float32(np.nan).view(np.int32)
    nodes = np.array([[np.float32(0.5).view(np.int32), 0, 1, -1], [nan, LEAF, 1, 0], [nan, LEAF, 2, 1]], np.int32)
    return CompiledForests(nodes=nodes, leaf32=np.eye(2, dtype=np.float32), leaf64=np.eye(2),
                           roots=np.array([0], np.int32), forest_ends=np.array([1], np.int32), class_count=2,
                           feature_count=1)


@pytest.mark.parametrize("damage", [
    lambda f: f.nodes.__setitem__((0, 2), 0),  # a loop back to the root: walks would never end
    lambda f: f.nodes.__setitem__((0, 2), 2),  # a second child past the table
    lambda f: f.nodes.__setitem__((0, 1), 7),  # a feature the matrix does not have
    lambda f: f.nodes.__setitem__((2, 3), 5),  # a leaf row past the table
    lambda f: f.nodes.__setitem__((1, 0), 0),  # a leaf with a threshold would step to the next node
    lambda f: f.nodes.__setitem__((1, 1), 0),  # a leaf made inner: its children would not come after it
    lambda f: f.roots.__setitem__(0, -1),
])
def test_damaged_forests_are_refused_before_any_walk(damage):
    forest = _small_forest()
    assert np.allclose(forest.validate().predict(np.array([[0.0], [1.0]], np.float32)), [[1, 0], [0, 1]])
    damage(forest)
    with pytest.raises(ValueError):
        forest.validate()


def test_a_crafted_forest_in_a_project_is_a_project_error():
    from backend.compute.forest import Forest, Tree

    topology = np.array([0, 0, 0, 0, 2, 2, 0], np.int32)  # a threshold node whose children are itself
    tree = Tree(topology, np.zeros(8))
    with pytest.raises(ProjectError, match="damaged forest"):
        CompiledForests.build([Forest((tree,), (1, 2), 1)], "crafted.ilp")
