"""The Executor contract, on every implementation: the in-memory fake, local processes, ZeroMQ workers, Dask.

Each computes the same block the same way, refuses tasks of unknown pipelines, can take queued tasks off
its queue, keeps a pipeline as long as it holds a reference to it (or a pending task), reports a typed
status, and settles every future it handed out, also when it closes.
"""

from __future__ import annotations

import numpy as np
import pytest

from backend.compute.pipeline import BlockTask
from backend.distributed.dask_clusters import DaskSettings, start_dask
from backend.distributed.executor import ExecutorStatus
from backend.distributed.local_executor import LocalExecutor
from tests.fakes import FakeExecutor
from tests.helpers import wait_for
from tests.integration.test_executor import _pipeline, _task, small_project
from tests.integration.workers import ZmqWithWorkers


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("proj")))


def _fake(pipeline):
    executor = FakeExecutor(auto=True, compute=lambda job: job.pipeline.run(job.task))
    executor.add_pipeline(pipeline)
    return executor


def _refused(executor, task) -> bool:
    """Whether ``executor`` refuses ``task`` for its pipeline (a task it takes is withdrawn or awaited)."""
    try:
        future = executor.submit(task)
    except ValueError:
        return True
    if not executor.cancel(future):
        future.result(timeout=120)
    return False


def _dask(pipeline):
    """A LocalCluster of two single-threaded worker processes, as ``--dask local:2`` starts it."""
    executor = start_dask(DaskSettings(address="local:2"))
    executor.add_pipeline(pipeline)
    return executor


EXECUTORS = {
    "fake": _fake,
    "local": lambda pipeline: LocalExecutor(pipeline, workers=2),
    "zmq": lambda pipeline: ZmqWithWorkers(pipeline, workers=1, processes=2),
    "dask": _dask,
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("make", EXECUTORS.values(), ids=EXECUTORS.keys())
def test_executor_contract(project, make):
    path, image = project
    pipeline = _pipeline(path)
    expected = pipeline.run(_task(pipeline, image))
    executor = make(pipeline)
    try:
        assert executor.add_pipeline(pipeline) == pipeline.fingerprint()  # adding again changes nothing
        futures = [executor.submit(_task(pipeline, image)) for _ in range(6)]
        results = [f.result(timeout=120) for f in futures]
        assert all(np.array_equal(r, expected) for r in results)
        assert all(f.compute_s >= 0 for f in futures)
        status = executor.status()
        assert isinstance(status, ExecutorStatus) and status.done >= 6 and status.processes >= 1
        bad = BlockTask("k", "Probabilities", np.zeros((1, 1, 1, 1)), (0, 0, 0), (1, 1, 1),
                        ((0, 1),) * 3, "another-pipeline")
        with pytest.raises(ValueError):
            executor.submit(bad)
        queued = [executor.submit(_task(pipeline, image)) for _ in range(20)]
        cancelled = sum(executor.cancel(f) for f in queued)
        assert cancelled > 0
        assert all(f.cancelled() or np.array_equal(f.result(timeout=120), expected) for f in queued)
        assert not executor.cancel(futures[0])  # a settled task cannot be cancelled
        fingerprint = pipeline.fingerprint()
        executor.remove_pipeline(fingerprint)  # added twice: one reference is left
        assert np.array_equal(executor.submit(_task(pipeline, image)).result(timeout=120), expected)
        last = executor.submit(_task(pipeline, image))
        executor.remove_pipeline(fingerprint)  # the last reference: dropped once its pending task is settled
        assert np.array_equal(last.result(timeout=120), expected)
        wait_for(lambda: _refused(executor, _task(pipeline, image)), 30, interval=0.1,
                 message="a pipeline without references was kept")
        assert executor.add_pipeline(pipeline) == fingerprint  # added again: sent to the workers again
        assert np.array_equal(executor.submit(_task(pipeline, image)).result(timeout=120), expected)
        pending = [executor.submit(_task(pipeline, image)) for _ in range(4)]
    finally:
        executor.close()
    for future in pending:  # every future is settled, whatever closing did to it
        assert future.done()
    late = executor.submit(_task(pipeline, image)) if not isinstance(executor, ZmqWithWorkers) else \
        executor.executor.submit(_task(pipeline, image))
    assert late.done() and (late.cancelled() or late.exception() is not None)
