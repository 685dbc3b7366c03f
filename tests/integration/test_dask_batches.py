"""The Dask executor's batches on a real Dask cluster (one module-wide LocalCluster of two single-threaded worker
processes; their pipeline plugin records the blocks it computes and computes nothing): the scheduler takes many
tasks per graph update, a worker runs an urgent block before the many batch blocks queued ahead of it, withdrawn
members of a batch never run, and results that died with their worker before they were fetched are computed
again."""

from __future__ import annotations

import os
import threading
import time
from unittest import mock

import numpy as np
import psutil
import pytest

pytest.importorskip("distributed")

from distributed import SchedulerPlugin  # noqa: E402

from backend.compute.pipeline import BlockTask  # noqa: E402
from backend.distributed import dask_executor  # noqa: E402
from backend.distributed.dask_clusters import DaskSettings, start_dask  # noqa: E402
from backend.service.gateway import BATCH, VISIBLE  # noqa: E402
from tests.helpers import wait_for  # noqa: E402

pytestmark = pytest.mark.timeout(300)


class RecordingPipeline:
    """On a worker: notes each block's key (``NAME-NUMBER``) in a file of the test's folder, waits while a file
    NAME exists there, and returns a block filled with NUMBER."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def run(self, task, workspace: dict) -> np.ndarray:
        with open(os.path.join(self.folder, f"seen-{os.getpid()}"), "a") as seen:
            seen.write(f"{time.monotonic()} {task.key}\n")
        while os.path.exists(os.path.join(self.folder, task.key.partition("-")[0])):
            time.sleep(0.01)
        shape = tuple(b - a for a, b in task.target) + (2,)
        return np.full(shape, float(task.key.rpartition("-")[2] or 0), np.float32)


class RecordingPlugin(dask_executor.PipelinePlugin):
    """The pipeline plugin with :class:`RecordingPipeline`; the folder travels in the pipeline's header."""

    def setup(self, worker) -> None:
        import json

        self.pipeline = RecordingPipeline(json.loads(self.header)["folder"])
        self._local = threading.local()


class GraphCount(SchedulerPlugin):
    """On the scheduler: how many graph updates brought how many tasks."""

    name = "graph-count"

    def __init__(self) -> None:
        self.graphs = self.tasks = 0

    def update_graph(self, scheduler, *, keys, **kwargs) -> None:
        self.graphs += 1
        self.tasks += len(keys)


class Pipeline:
    def __init__(self, folder: str) -> None:
        self.folder = folder

    def fingerprint(self) -> str:
        return "recording"

    def to_message(self):
        return {"folder": self.folder}, []


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(tmp_path_factory.mktemp("dask-batches"))


@pytest.fixture(scope="module")
def executor(folder):
    import dask

    # one task at a time on each worker thread: what a worker runs next is the scheduler's choice
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        executor = start_dask(DaskSettings(address="local:2"))
    try:
        assert executor.wait_for_workers(2, timeout=120)
        with mock.patch.object(dask_executor, "PipelinePlugin", RecordingPlugin):
            executor.add_pipeline(Pipeline(folder))
        executor.client.register_plugin(GraphCount())
        yield executor
    finally:
        executor.close()


def _task(key: str) -> BlockTask:
    return BlockTask(key, "Probabilities", np.zeros((1, 2, 2, 1), np.uint8), (0, 0, 0), (1, 2, 2),
                     ((0, 1), (0, 2), (0, 2)), "recording")


def _seen(folder: str) -> list[str]:
    """The keys the workers computed, in the order they started them."""
    lines = []
    for name in os.listdir(folder):
        if name.startswith("seen-"):
            with open(os.path.join(folder, name)) as seen:
                lines += [line.split() for line in seen if line.strip()]
    return [key for _, key in sorted(lines, key=lambda line: float(line[0]))]


def _graphs(executor) -> tuple[int, int]:
    return executor.client.run_on_scheduler(lambda dask_scheduler: (dask_scheduler.plugins["graph-count"].graphs,
                                                                     dask_scheduler.plugins["graph-count"].tasks))


@pytest.fixture
def clean(folder):
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))
    yield folder
    for name in ("holda", "holdb"):
        _release(folder, name)


def _hold_both_workers(executor, folder: str) -> list:
    """Two blocks (holda-0, holdb-1) that keep both workers busy until :func:`_release` of their names."""
    for name in ("holda", "holdb"):
        open(os.path.join(folder, name), "w").close()
    held = [executor.submit(_task(key), BATCH) for key in ("holda-0", "holdb-1")]
    wait_for(lambda: len(_seen(folder)) == 2, 60, message=lambda: f"the workers started {_seen(folder)}")
    return held


def _release(folder: str, name: str) -> None:
    if os.path.exists(os.path.join(folder, name)):
        os.remove(os.path.join(folder, name))


def _on_scheduler(executor, name: str) -> int:
    """How many tasks of blocks named ``name-...`` the scheduler holds."""
    return executor.client.run_on_scheduler(
        lambda dask_scheduler: sum(f"-{name}-" in str(key) for key in dask_scheduler.tasks))


def test_many_blocks_reach_the_scheduler_in_few_graph_updates(executor, clean):
    graphs, tasks = _graphs(executor)
    futures = [executor.submit(_task(f"b-{i}"), BATCH) for i in range(200)]
    values = [f.result(timeout=120) for f in futures]
    assert all(v.shape == (1, 2, 2, 2) and v[0, 0, 0, 0] == i for i, v in enumerate(values))
    graphs_after, tasks_after = _graphs(executor)
    assert tasks_after - tasks == 200
    assert graphs_after - graphs < 50, f"{graphs_after - graphs} graph updates for 200 blocks"
    assert executor.status().queued == 0


def test_an_urgent_block_submitted_after_many_batch_blocks_runs_before_them(executor, clean):
    held = _hold_both_workers(executor, clean)
    batch = [executor.submit(_task(f"batch-{i}"), BATCH) for i in range(30)]
    wait_for(lambda: _on_scheduler(executor, "batch") == 30, 30)  # the batch waits on the scheduler
    urgent = executor.submit(_task("urgent-99"), VISIBLE)
    wait_for(lambda: _on_scheduler(executor, "urgent") == 1, 30)
    _release(clean, "holda")  # one worker free: it takes the most urgent block, then the batch in its order
    assert urgent.result(timeout=60)[0, 0, 0, 0] == 99
    wait_for(lambda: len(_seen(clean)) >= 10, 60)
    _release(clean, "holdb")
    assert all(f.result(timeout=60) is not None for f in held + batch)
    order = _seen(clean)
    assert order[2] == "urgent-99", order
    assert order[3:10] == [f"batch-{i}" for i in range(7)], order  # one worker alone: submission order
    assert sorted(order[3:]) == sorted(f"batch-{i}" for i in range(30))


def test_withdrawn_members_of_a_queued_batch_never_run(executor, clean):
    held = _hold_both_workers(executor, clean)
    batch = [executor.submit(_task(f"member-{i}"), BATCH) for i in range(20)]
    withdrawn = batch[1::2]
    assert all(executor.cancel(f) for f in withdrawn)
    _release(clean, "holda")
    _release(clean, "holdb")
    kept = [f.result(timeout=60)[0, 0, 0, 0] for f in batch[::2]]
    assert kept == list(range(0, 20, 2)) and all(f.cancelled() for f in withdrawn)
    assert all(f.result(timeout=60) is not None for f in held)
    wait_for(lambda: executor.status().queued == 0, 10)
    computed = set(_seen(clean))
    assert not computed & {f"member-{i}" for i in range(1, 20, 2)}, sorted(computed)


def test_results_lost_with_their_worker_before_they_were_fetched_are_computed_again(executor, clean):
    held = _hold_both_workers(executor, clean)
    gate = threading.Event()
    held[0].add_done_callback(lambda _: gate.wait(60))  # the results thread waits here: later results stay put
    rest = [executor.submit(_task(f"rest-{i}"), BATCH) for i in range(1, 21)]
    _release(clean, "holda")
    _release(clean, "holdb")
    wait_for(lambda: len(_seen(clean)) >= 22, 60, message=lambda: f"computed {len(_seen(clean))} of 22")
    waiting = {f"-rest-{i}-" for i, f in enumerate(rest, 1) if not f.done()}  # computed, not fetched yet

    def kept(address: str) -> int:
        return sum(any(name in key for name in waiting) for key in held_by[address])

    held_by = executor.client.has_what()
    victim = max(held_by, key=kept)
    assert kept(victim), (held_by, waiting)  # results kept on a worker
    psutil.Process(executor.client.run(os.getpid)[victim]).kill()
    gate.set()
    assert [f.result(timeout=120)[0, 0, 0, 0] for f in rest] == list(range(1, 21))
    assert len(_seen(clean)) > 22  # some were computed again
