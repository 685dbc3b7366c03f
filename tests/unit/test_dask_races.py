"""DaskExecutor against an in-memory client: the orderings a real cluster produces only now and then."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("distributed")

from backend.compute.pipeline import BlockTask  # noqa: E402
from backend.distributed.dask_executor import DaskExecutor  # noqa: E402


class ClusterFuture:
    """A Dask future whose completion callback is run when the test says, with the status it saw then."""

    def __init__(self) -> None:
        self.status = "pending"
        self.released = False
        self.callbacks: list = []
        self.complete_on_cancel = False

    def add_done_callback(self, callback) -> None:
        self.callbacks.append(callback)

    def finish_while(self, action) -> None:
        """Complete; the completion callback sees "finished" but ``action`` runs before it reads the result."""
        self.status = "finished"
        self.before_read = action
        for callback in self.callbacks:
            callback(self)

    def result(self):
        self.before_read()
        if self.released:
            raise RuntimeError("FutureCancelledError: the result was released")
        return np.ones((1, 1, 1, 1), np.float32), 0.01

    def cancel(self) -> None:
        self.released = True
        if self.complete_on_cancel:  # it had finished; its callback, seeing "finished", reads only now
            self.finish_while(lambda: None)


class Client:
    status = "running"

    def __init__(self) -> None:
        self.submitted: list[ClusterFuture] = []

    def submit(self, *args, **kwargs) -> ClusterFuture:
        self.submitted.append(ClusterFuture())
        return self.submitted[-1]

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
    executor = DaskExecutor(Client(), "in-memory cluster")
    executor.add_pipeline(Pipeline())
    yield executor
    executor.close()


def test_cancel_racing_a_completion_callback_cancels_and_never_reports_a_lost_cluster(executor):
    future = executor.submit(_task())
    inner = executor.client.submitted[0]
    cancelled = []
    inner.finish_while(lambda: cancelled.append(executor.cancel(future)))
    assert cancelled == [True] and future.cancelled()


def test_cancel_whose_release_races_the_completion_callback_still_cancels(executor):
    future = executor.submit(_task())
    executor.client.submitted[0].complete_on_cancel = True
    assert executor.cancel(future) and future.cancelled()


def test_cancel_after_the_result_arrived_changes_nothing(executor):
    future = executor.submit(_task())
    executor.client.submitted[0].finish_while(lambda: None)
    assert not executor.cancel(future)
    assert future.result(timeout=1).shape == (1, 1, 1, 1)
    assert not executor.client.submitted[0].released


def test_cancel_before_completion_releases_the_cluster_future(executor):
    future = executor.submit(_task())
    assert executor.cancel(future) and future.cancelled()
    assert executor.client.submitted[0].released
    assert executor.status().queued == 0
