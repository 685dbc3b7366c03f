"""DaskExecutor against an in-memory client: batches and the orderings a real cluster produces only now and then
(the client's calls can be held while the test acts)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("distributed")

from backend.compute.pipeline import BlockTask  # noqa: E402
from backend.config import ExecutorConfig  # noqa: E402
from backend.distributed.dask_executor import DaskExecutor  # noqa: E402
from tests.helpers import wait_for  # noqa: E402


class ClusterFuture:
    """A Dask future whose completion callback is run when the test says, with the status it saw then."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.status = "pending"
        self.released = False
        self.callbacks: list = []
        self.complete_on_cancel = False
        self.before_read = lambda: None

    def add_done_callback(self, callback) -> None:
        self.callbacks.append(callback)
        if self.status != "pending":
            callback(self)

    def finish_while(self, action) -> None:
        """Complete; the completion callback sees "finished" but ``action`` runs before its result is read."""
        self.status = "finished"
        self.before_read = action
        for callback in self.callbacks:
            callback(self)

    def value(self):
        self.before_read()
        if self.released:
            return None  # gather(errors="skip") of a released future
        return np.ones((1, 1, 1, 1), np.float32), 0.01

    def cancel(self) -> None:
        self.released = True
        if self.complete_on_cancel:  # it had finished; its callback, seeing "finished", reads only now
            self.finish_while(lambda: None)


class Client:
    status = "running"

    def __init__(self) -> None:
        self.submitted: list[ClusterFuture] = []
        self.maps: list[tuple[int, int]] = []  # (tasks, Dask priority) of each map call
        self.gathers: list[int] = []
        self.maps_entered = 0
        self.hold_map = threading.Event()
        self.hold_map.set()
        self.hold_gather = threading.Event()
        self.hold_gather.set()

    def map(self, func, fingerprints, frames, key, priority, **kwargs) -> list[ClusterFuture]:
        self.maps_entered += 1
        self.hold_map.wait(10)
        futures = [ClusterFuture(k) for k in key]
        self.maps.append((len(futures), priority))
        self.submitted += futures
        return futures

    def gather(self, futures: dict, errors: str) -> dict:
        self.hold_gather.wait(10)
        self.gathers.append(len(futures))
        return {key: future.value() for key, future in futures.items()}

    def cancel(self, futures) -> None:
        for future in futures:
            future.cancel()

    def scheduler_info(self, n_workers: int = -1) -> dict:
        return {"workers": {}}

    def register_plugin(self, plugin) -> None:
        pass

    def close(self, timeout: float = 0) -> None:
        pass


class Pipeline:
    def fingerprint(self) -> str:
        return "p"

    def to_message(self):
        return {}, []


def _task() -> BlockTask:
    return BlockTask("k", "Probabilities", np.zeros((1, 1, 1, 1), np.float32), (0, 0, 0), (1, 1, 1),
                     ((0, 1),) * 3, "p")


@pytest.fixture
def executor():
    executor = DaskExecutor(Client(), "in-memory cluster", config=ExecutorConfig(dask_gather_batch=8))
    executor.add_pipeline(Pipeline())
    yield executor
    executor.client.hold_map.set()
    executor.client.hold_gather.set()
    executor.close()


def _sent(executor, count: int = 1) -> list[ClusterFuture]:
    wait_for(lambda: len(executor.client.submitted) >= count, 5, message="the tasks were not sent")
    return executor.client.submitted


def test_cancel_racing_the_gather_cancels_and_never_reports_a_lost_cluster(executor):
    future = executor.submit(_task())
    cancelled = []
    _sent(executor)[0].finish_while(lambda: cancelled.append(executor.cancel(future)))
    wait_for(lambda: future.done(), 5)
    assert cancelled == [True] and future.cancelled()


def test_cancel_whose_release_races_the_completion_callback_still_cancels(executor):
    future = executor.submit(_task())
    _sent(executor)[0].complete_on_cancel = True
    assert executor.cancel(future) and future.cancelled()
    wait_for(lambda: executor.client.submitted[0].released, 5)
    assert executor.status().queued == 0


def test_cancel_after_the_result_arrived_changes_nothing(executor):
    future = executor.submit(_task())
    _sent(executor)[0].finish_while(lambda: None)
    assert future.result(timeout=5).shape == (1, 1, 1, 1)
    assert not executor.cancel(future)
    assert not executor.client.submitted[0].released


def test_cancel_before_completion_releases_the_cluster_future(executor):
    future = executor.submit(_task())
    _sent(executor)
    assert executor.cancel(future) and future.cancelled()
    wait_for(lambda: executor.client.submitted[0].released, 5, message="the cluster's future was kept")
    assert executor.status().queued == 0


def test_tasks_queued_meanwhile_go_in_one_map_per_priority_the_most_urgent_first(executor):
    client = executor.client
    client.hold_map.clear()
    first = executor.submit(_task(), 3)
    wait_for(lambda: client.maps_entered == 1, 5)
    batch = [executor.submit(_task(), 3) for _ in range(10)]
    urgent = executor.submit(_task(), 0)
    withdrawn = batch[4]
    assert executor.cancel(withdrawn)  # a queued member of the coming batch: never sent
    client.hold_map.set()
    futures = _sent(executor, 11)
    assert client.maps == [(1, -3), (1, 0), (9, -3)]
    assert executor.batches_sent == 3 and executor.status().queued == 11
    for future in futures:
        future.finish_while(lambda: None)
    assert all(f.result(timeout=5) is not None for f in [first, urgent, *batch] if f is not withdrawn)
    assert withdrawn.cancelled() and executor.status().queued == 0


def test_results_are_fetched_in_batches_of_at_most_dask_gather_batch(executor):
    client = executor.client
    futures = [executor.submit(_task()) for _ in range(20)]
    sent = _sent(executor, 20)
    client.hold_gather.clear()
    sent[0].finish_while(lambda: None)
    wait_for(lambda: executor.status().queued == 20 and len(executor._batches._finished) == 0, 5)
    for inner in sent[1:]:
        inner.finish_while(lambda: None)
    client.hold_gather.set()
    assert all(f.result(timeout=5).shape == (1, 1, 1, 1) for f in futures)
    assert sum(client.gathers) == 20 and max(client.gathers) <= 8 and len(client.gathers) <= 4, client.gathers
    assert executor.status().done == 20 and executor.status().compute_s == pytest.approx(0.2)


def test_close_settles_the_queued_the_sent_and_the_one_being_fetched(executor):
    client = executor.client
    fetched, sent = executor.submit(_task()), executor.submit(_task())
    inners = _sent(executor, 2)
    client.hold_gather.clear()
    inners[0].finish_while(lambda: None)
    client.hold_map.clear()
    trigger = executor.submit(_task())
    wait_for(lambda: client.maps_entered == 2, 5)
    queued = executor.submit(_task())
    closing = threading.Thread(target=executor.close)
    closing.start()
    client.hold_map.set()
    client.hold_gather.set()
    closing.join(10)
    assert not closing.is_alive()
    assert all(f.done() for f in (fetched, sent, trigger, queued))
    assert sent.cancelled() and queued.cancelled() and inners[1].released
    late = executor.submit(_task())
    assert late.done() and late.exception() is not None
