"""Live training retrains about 0.4 s after each stroke. After 30 retrains through a gateway, every place a
pipeline lives holds a bounded number of them: the ZeroMQ executor's messages and roster, the worker's kept
pipelines and their files, each compute process's loaded pipelines, the Dask plugins on scheduler and workers."""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading

import numpy as np
import pytest

from backend.compute.geometry import Roi
from backend.config import ExecutorConfig, WorkerConfig
from backend.distributed import local_executor
from backend.distributed.pipeline_folder import PipelineFolder
from backend.distributed.worker import Worker, WorkerOptions
from backend.distributed.zmq_executor import ZmqExecutor
from backend.service.gateway import Gateway, GatewayConfig
from tests.fakes import FakeCache
from tests.helpers import wait_for
from tests.integration.test_executor import _pipeline, _task, small_project
from tests.integration.test_gateway import source_of

RETRAINS = 30
KEPT = WorkerConfig().pipelines_kept
ROI = Roi((0, 0, 0, 0), (1, 8, 32, 32))  # one block of the gateway's grid


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("retrain")))


def retrained(pipeline, n: int):
    """Another classifier, as retraining after a stroke gives one: the forests' leaves nudged."""
    forests = pipeline.forests
    leaf64 = forests.leaf64 * (1 - n * 1e-3)
    return dataclasses.replace(pipeline, forests=dataclasses.replace(forests, leaf64=leaf64,
                                                                     leaf32=leaf64.astype(np.float32)))


def expected(pipeline, image) -> np.ndarray:
    """The gateway's answer for ROI, computed here."""
    halo = pipeline.halo
    stop = [min(n, b + h) for b, h, n in zip(ROI.stop[1:], halo, image.shape)]
    raw = image[: stop[0], : stop[1], : stop[2], None]
    from backend.compute.pipeline import BlockTask

    task = BlockTask("k", "Probabilities", raw, (0, 0, 0), image.shape, tuple(zip(ROI.start[1:], ROI.stop[1:])),
                     pipeline.fingerprint())
    return pipeline.run(task)[None]


def retrain_and_view(gateway: Gateway, pipeline, image) -> None:
    """Retrain ``RETRAINS`` times, viewing the block after each; the first and last views are checked."""
    for n in range(1, RETRAINS + 1):
        classifier = retrained(pipeline, n)
        gateway.set_pipeline(classifier)
        values = gateway.request("Probabilities", ROI).result(timeout=120)
        if n in (1, RETRAINS):
            assert np.array_equal(values, expected(classifier, image))


@pytest.mark.timeout(300)
def test_thirty_retrains_leave_few_pipelines_in_the_executor_the_worker_and_its_folder(project):
    path, image = project
    pipeline = _pipeline(path)
    executor = ZmqExecutor(config=ExecutorConfig(heartbeat_s=0.2))
    worker = Worker(WorkerOptions(connect=executor.address, processes=1, timing=WorkerConfig(heartbeat_s=0.2)))
    thread = threading.Thread(target=worker.run, name="test-worker")
    thread.start()
    try:
        assert executor.wait_for_workers(1, timeout=90)
        gateway = Gateway(source_of(path), pipeline, executor, FakeCache(), GatewayConfig((1, 8, 32, 32)))
        retrain_and_view(gateway, pipeline, image)
        folder = worker.pool._folder

        def counts() -> dict[str, int]:
            return {"executor messages": len(executor._messages), "roster": len(executor.roster.pipelines),
                    "worker": len(worker.pipelines), "pool": len(worker.pool.pipelines),
                    "files": len(folder.fingerprints())}

        wait_for(lambda: counts()["executor messages"] <= 2 and counts()["roster"] <= 2, 10,
                 message=lambda: f"the executor kept {counts()}")
        assert counts()["worker"] <= KEPT and counts()["pool"] <= KEPT + 1  # a dropped one waits for its task
        wait_for(lambda: counts()["files"] <= KEPT, 10, message=lambda: f"the worker kept {counts()}")
        gateway.close()
    finally:
        worker.stop()
        thread.join(timeout=30)
        executor.close()
    assert not thread.is_alive()


def test_each_compute_process_keeps_the_pipelines_it_used_last(project, tmp_path, monkeypatch):
    path, image = project
    pipeline = _pipeline(path)
    folder = PipelineFolder(str(tmp_path))
    monkeypatch.setattr(local_executor, "_worker_pipelines", type(local_executor._worker_pipelines)())
    try:
        for n in range(1, RETRAINS + 1):
            classifier = retrained(pipeline, n)
            folder.save(classifier, classifier.fingerprint())
            local_executor._run_task(_task(classifier, image), folder.path, 60.0, KEPT)
        assert list(local_executor._worker_pipelines) == [retrained(pipeline, n).fingerprint()
                                                          for n in range(RETRAINS - KEPT + 1, RETRAINS + 1)]
    finally:
        folder.remove()
    assert not os.path.exists(folder.path)


@pytest.mark.timeout(400)
def test_thirty_retrains_on_dask_leave_few_plugins_on_the_scheduler_and_the_workers(project):
    from backend.distributed.dask_clusters import DaskSettings, start_dask

    path, image = project
    pipeline = _pipeline(path)
    with start_dask(DaskSettings(address="local:1")) as executor:
        assert executor.wait_for_workers(1, timeout=90)
        gateway = Gateway(source_of(path), pipeline, executor, FakeCache(), GatewayConfig((1, 8, 32, 32)))
        retrain_and_view(gateway, pipeline, image)

        def plugins() -> tuple[int, int]:
            ours = "ilastik-pipeline-"
            on_scheduler = executor.client.run_on_scheduler(
                lambda dask_scheduler: sum(name.startswith(ours) for name in dask_scheduler.worker_plugins))
            on_workers = executor.client.run(lambda dask_worker: sum(name.startswith(ours)
                                                                      for name in dask_worker.plugins))
            return on_scheduler, max(on_workers.values())

        wait_for(lambda: max(plugins()) <= 2, 30, interval=0.2, message=lambda: f"plugins kept: {plugins()}")
        gateway.close()


@pytest.mark.timeout(300)
def test_retraining_in_the_window_leaves_only_the_pipelines_in_use_with_the_executor(data_dir, tmp_path):
    """The training takes a reference to install its classifier off the GUI thread and gives it back once the
    gateway holds its own: the features-only pipeline of the session and the current classifier are left."""
    from backend.config import TrainingConfig
    from ilastik_desktop.runtime.document import open_document
    from ilastik_desktop.runtime.training import TrainingController
    from tests.fakes import FakeServices

    shutil.copy(os.path.join(data_dir, "seed", "pc.ilp"), tmp_path / "pc.ilp")
    shutil.copy(os.path.join(data_dir, "seed", "raw.h5"), tmp_path / "raw.h5")
    services = FakeServices()
    controller = TrainingController(open_document(str(tmp_path / "pc.ilp"), services,
                                                  str(tmp_path / "raw.h5") + "/exported_data"),
                                    services.executor, TrainingConfig())
    trained: list[str] = []
    controller.trained.connect(trained.append)
    try:
        fingerprints = set()
        for n in range(5):
            controller.stroke((0, 0, 0, 0), "y", "x", [(30 + 8 * n, 20), (30 + 8 * n, 100)], 3, 1)
            controller.stroke((0, 0, 0, 0), "y", "x", [(150 - 8 * n, 20), (150 - 8 * n, 100)], 3, 2)
            assert controller.train()
            wait_for(lambda n=n: len(trained) > n, 120)
            assert trained[-1].startswith("trained")
            fingerprints.add(controller.document.gateway.pipeline_fingerprint)
        assert len(fingerprints) == 5
        services.executor.collect()
        assert len(services.executor.pipelines) <= 2, sorted(services.executor.pipelines)
    finally:
        controller.close()
        services.close()
