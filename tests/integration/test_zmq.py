"""ZeroMQ workers and executor with real processes on loopback: failures, listen mode, hostile input."""

import os
import random
import signal
import socket as sockets
import threading
import time

import numpy as np
import psutil
import pytest
import zmq

from backend.compute.pipeline import BlockTask
from backend.config import ExecutorConfig
from backend.distributed.protocol import decode, encode
from backend.distributed.worker import PROTOCOL_NAME
from backend.distributed.zmq_executor import TaskError, ZmqExecutor
from tests.helpers import stays, wait_for
from tests.integration.test_executor import _pipeline, _task, small_project
from tests.integration.workers import ZmqWithWorkers, free_port, kill_worker, start_worker


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("zmq")))


def test_protocol_round_trip_and_rejections():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    m = decode(encode("RESULT", {"key": "7"}, [a]))
    assert m.type == "RESULT" and m.fields == {"key": "7"} and np.array_equal(m.arrays[0], a)
    from backend.distributed.protocol import ProtocolError

    bad = [[b"not json"], [b"[]"], [b'{"v": 99, "type": "READY"}'], [b'{"v": 1, "type": "EXPLODE"}'],
           [b'{"v": 1, "type": "RESULT", "arrays": [{"dtype": "<f4", "shape": [3]}]}', b"12345"],
           [b'{"v": 1, "type": "RESULT", "arrays": [{"dtype": "|O", "shape": [1]}]}', b"12345678"], []]
    for frames in bad:
        with pytest.raises(ProtocolError):
            decode(frames)


@pytest.mark.timeout(180)
def test_sigkill_of_a_worker_mid_task_recomputes_its_blocks(project):
    path, image = project
    pipeline = _pipeline(path)
    expected = pipeline.run(_task(pipeline, image))
    with ZmqWithWorkers(pipeline, workers=2, processes=1) as ex:
        futures = [ex.submit(_task(pipeline, image)) for _ in range(12)]
        wait_for(lambda: any(w.in_flight for w in ex.status().workers), 30,
                 message=lambda: f"no worker took a task: {ex.status()}")
        kill_worker(ex.procs[0])
        started = time.monotonic()
        results = [f.result(timeout=120) for f in futures]
        assert all(np.array_equal(r, expected) for r in results)
        status = ex.status()
        assert len(status.workers) == 1 and status.redispatched >= 1
        assert time.monotonic() - started < 60


@pytest.mark.timeout(180)
def test_listen_mode_and_worker_restart(project):
    path, image = project
    pipeline = _pipeline(path)
    expected = pipeline.run(_task(pipeline, image))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = start_worker("--listen", endpoint)
    try:
        with ZmqExecutor(bind=None, connect_to=(endpoint,), config=ExecutorConfig(heartbeat_s=0.2)) as ex:
            ex.add_pipeline(pipeline)
            assert ex.wait_for_workers(1, timeout=60)
            assert np.array_equal(ex.submit(_task(pipeline, image)).result(timeout=60), expected)
            assert ex.status().workers[0].endpoint == endpoint
            kill_worker(proc)
            future = ex.submit(_task(pipeline, image))
            proc = start_worker("--listen", endpoint)
            assert np.array_equal(future.result(timeout=90), expected)
    finally:
        kill_worker(proc)


@pytest.mark.timeout(120)
def test_a_listening_worker_serves_gateway_after_gateway_and_stops_when_alone(project):
    """A gateway reconnecting at once (within the worker's silence window) is greeted like a new one,
    and a listening worker whose gateway left still answers SIGTERM (its sends used to block with no peer)."""
    path, image = project
    pipeline = _pipeline(path)
    expected = pipeline.run(_task(pipeline, image))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = start_worker("--listen", endpoint, heartbeat=1.0)
    try:
        for _ in range(3):
            with ZmqExecutor(bind=None, connect_to=(endpoint,), config=ExecutorConfig(heartbeat_s=0.2)) as ex:
                ex.add_pipeline(pipeline)
                assert ex.wait_for_workers(1, timeout=60)
                assert np.array_equal(ex.submit(_task(pipeline, image)).result(timeout=60), expected)
        stays(lambda: proc.poll() is None, 2.5, interval=0.1,  # alone: a heartbeat or two would have been due
              message="the worker ended without its gateway")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        kill_worker(proc)


@pytest.mark.timeout(60)
def test_late_results_of_another_gateways_tasks_are_ignored(project):
    """A worker that served an earlier gateway may still send that gateway's results: their keys must
    never match a task of ours (task keys used to be plain sequence numbers, the same in every gateway)."""
    path, image = project
    pipeline = _pipeline(path)
    task = _task(pipeline, image)
    expected = pipeline.run(task)
    with ZmqExecutor(config=ExecutorConfig(heartbeat_s=0.2)) as ex:
        ex.add_pipeline(pipeline)
        peer = zmq.Context.instance().socket(zmq.DEALER)
        peer.setsockopt(zmq.LINGER, 0)
        peer.connect(ex.address)
        try:
            peer.send_multipart(encode("READY", {"processes": 1, "version": PROTOCOL_NAME, "host": "fake"}))
            assert ex.wait_for_workers(1, timeout=10)
            future = ex.submit(task)
            sent = _next_message(peer, "TASK")
            for stale in ("0", "1", "k"):
                peer.send_multipart(encode("RESULT", {"key": stale}, [np.zeros_like(expected)]))
            peer.send_multipart(encode("RESULT", {"key": sent.fields["key"]}, [expected]))
            assert np.array_equal(future.result(timeout=10), expected)
            assert ex.status().done == 1
        finally:
            peer.close()


def _next_message(sock: zmq.Socket, kind: str, timeout_s: float = 10.0):
    """The next message of type ``kind`` arriving on ``sock`` (others are skipped)."""
    def next_of_kind():
        while sock.poll(0):
            message = decode(sock.recv_multipart())
            if message.type == kind:
                return message
        return None

    return wait_for(next_of_kind, timeout_s, message=f"no {kind} message")


@pytest.mark.timeout(120)
def test_deterministic_failure_is_reported_once(project):
    path, image = project
    pipeline = _pipeline(path)
    with ZmqWithWorkers(pipeline) as ex:
        good = _task(pipeline, image)
        broken = BlockTask("bad", "Probabilities", np.zeros((2, 2, 2, 1), np.float32), (0, 0, 0), (64, 64, 64),
                           ((0, 40), (0, 40), (0, 40)), good.pipeline)
        with pytest.raises(TaskError):
            ex.submit(broken).result(timeout=60)
        assert ex.status().failed == 1 and ex.status().redispatched == 0
        assert ex.submit(good).result(timeout=60).shape == (8, 32, 32, 2)


@pytest.mark.timeout(180)
def test_random_and_truncated_messages_crash_neither_side(project):
    path, image = project
    pipeline = _pipeline(path)
    expected = pipeline.run(_task(pipeline, image))
    rng = random.Random(1)
    valid = encode("TASK", {"key": "x"}, [np.zeros(4, np.float32)])
    junk = [[os.urandom(rng.randint(0, 64)) for _ in range(rng.randint(1, 4))] for _ in range(150)]
    junk += [[f[: rng.randint(0, len(f))] for f in valid] for _ in range(50)]
    junk += [encode("RESULT", {"key": "nope"}, [np.zeros(3)]), encode("READY", {"processes": "many"})]
    context = zmq.Context.instance()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    listener = start_worker("--listen", endpoint)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(listener.stderr.readline, "")), daemon=True).start()
    try:
        with ZmqWithWorkers(pipeline) as ex:
            for target, arrived in ((ex.address, lambda: ex.status().dropped_messages >= 200),
                                    (endpoint, lambda: any("(200 so far)" in line for line in lines))):
                peer = context.socket(zmq.DEALER)
                peer.setsockopt(zmq.LINGER, 0)
                peer.connect(target)
                for frames in junk:
                    peer.send_multipart([bytes(f) for f in frames] or [b""])
                wait_for(arrived, 60, interval=0.02,  # proven arrived: the receiver counted at least 200 drops
                         message=lambda: str((ex.status().dropped_messages, lines[-3:])))
                peer.close()
            assert np.array_equal(ex.submit(_task(pipeline, image)).result(timeout=60), expected)
            assert listener.poll() is None and all(p.poll() is None for p in ex.procs)
        with ZmqExecutor(bind=None, connect_to=(endpoint,), config=ExecutorConfig(heartbeat_s=0.2)) as ex2:
            ex2.add_pipeline(pipeline)
            assert ex2.wait_for_workers(1, timeout=60)
            assert np.array_equal(ex2.submit(_task(pipeline, image)).result(timeout=60), expected)
    finally:
        kill_worker(listener)


def test_priorities_order_the_queue(project):
    path, image = project
    pipeline = _pipeline(path)
    with ZmqWithWorkers(pipeline) as ex:
        done_order = []
        blockers = [ex.submit(_task(pipeline, image), priority=5) for _ in range(4)]
        low = ex.submit(_task(pipeline, image), priority=9)
        high = ex.submit(_task(pipeline, image), priority=0)
        low.add_done_callback(lambda f: done_order.append("low"))
        high.add_done_callback(lambda f: done_order.append("high"))
        for f in blockers + [low, high]:
            f.result(timeout=120)
        assert done_order == ["high", "low"]


@pytest.mark.timeout(90)
def test_sigterm_stops_a_worker_whose_gateway_is_gone(tmp_path):
    """SIGTERM to the worker process alone (not its group) ends it and its compute processes promptly,
    also while it waits to reconnect and when signals arrive during the handler (which used to deadlock
    on a lock the interrupted handler held)."""
    import psutil

    proc = start_worker("--connect", f"ipc://{tmp_path}/nobody-listens", processes=2, heartbeat=0.1)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    try:
        worker = psutil.Process(proc.pid)
        wait_for(lambda: len(worker.children(recursive=True)) >= 2, 60, interval=0.1,
                 message=lambda: f"the worker started too few processes: {worker.children(recursive=True)}")
        # the gateway is silent: the worker is in its reconnect back-off once it says so
        wait_for(lambda: any("reconnecting in" in line for line in lines), 60, interval=0.05,
                 message=lambda: f"the worker did not go into its reconnect back-off: {lines[-5:]}")
        children = worker.children(recursive=True)
        stop_sending = time.monotonic() + 1.0
        while time.monotonic() < stop_sending and proc.poll() is None:  # a storm: handlers interrupt handlers
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) in (0, -signal.SIGTERM)  # -SIGTERM: one arrived as Python was exiting
        gone, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        kill_worker(proc)


@pytest.mark.timeout(180)
def test_a_visible_tile_waits_behind_at_most_one_export_block_per_process(project):
    """Exports fill one slot per process; the second (queued) slot stays free for what a viewer needs.
    Also what the README claims: never more than one task in flight plus one queued per process."""
    path, image = project
    pipeline = _pipeline(path)
    with ZmqWithWorkers(pipeline, workers=1, processes=1) as ex:
        finished: list[str] = []
        lock = threading.Lock()

        def record(name):
            def done(_):
                with lock:
                    finished.append(name)
            return done

        whole = BlockTask("k", "Probabilities", image[..., None], (0, 0, 0), image.shape,
                          tuple((0, n) for n in image.shape), pipeline.fingerprint())  # long enough to be seen
        exports = [ex.submit(whole, priority=3) for _ in range(6)]
        for f in exports:
            f.add_done_callback(record("export"))
        most_in_flight = 0

        def sampled(done):
            """``done``, with the most tasks in flight noted on every call."""
            def sample():
                nonlocal most_in_flight
                most_in_flight = max(most_in_flight, sum(w.in_flight for w in ex.status().workers))
                return done()
            return sample

        wait_for(sampled(lambda: finished), 30, interval=0.005, message="no export block finished")
        assert most_in_flight == 1  # exports alone: one slot of the process
        with lock:
            before = len(finished)
            visible = ex.submit(_task(pipeline, image), priority=0)
        visible.add_done_callback(record("visible"))
        visible.result(timeout=60)
        for f in exports:
            f.result(timeout=60)
        assert finished.index("visible") - before <= 1, finished  # behind the running export block at most
        views = [ex.submit(_task(pipeline, image), priority=0) for _ in range(6)]
        wait_for(sampled(lambda: all(f.done() for f in views)), 60, interval=0.002,  # sampled while they run
                 message="the views' blocks did not finish")
        assert all(f.result(timeout=60) is not None for f in views)
        assert most_in_flight == 2  # one computing plus one queued per process, never more


def test_endpoints_that_cannot_be_used_leave_nothing_behind():
    """A first bind that fails stops the executor's thread and context; connects that fail leave no socket."""
    with sockets.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(zmq.ZMQError):
            ZmqExecutor(bind=f"tcp://127.0.0.1:{port}")
    wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith(("zmq-executor", "zmq-completions"))],
             5, message=lambda: str([t.name for t in threading.enumerate()]))
    with ZmqExecutor(config=ExecutorConfig(heartbeat_s=0.2)) as ex:
        before = psutil.Process().num_fds()
        for _ in range(30):
            with pytest.raises(zmq.ZMQError):
                ex.connect("tcp://127.0.0.1:not-a-port")
        assert psutil.Process().num_fds() - before < 5
