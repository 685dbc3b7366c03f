"""Freeze means kill and replace: a stopped (SIGSTOP) compute process or local worker is killed and replaced,
its blocks are computed all the same, and nothing of it is left running."""

import os
import signal
import time

import numpy as np
import psutil
import pytest

from backend.config import Config, ExecutorConfig, WorkerConfig
from backend.distributed.local_executor import LocalExecutor, Slots
from backend.distributed.zmq_executor import ZmqExecutor
from backend.errors import TransientError
from ilastik_desktop.runtime.local_workers import LocalWorkers
from tests.helpers import wait_for
from tests.integration.test_executor import _pipeline, _task, small_project
from tests.integration.workers import ZmqWithWorkers, compute_processes


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("freezes")))


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_compute_processes_past_their_deadline_or_silent_are_reported_once():
    import multiprocessing

    slots = Slots.create(multiprocessing.get_context("spawn"), 3)
    for index, pid in enumerate((101, 102, 103)):
        slots.pids[index], slots.alive[index] = pid, 100.0
    slots.deadlines[0] = 105.0  # hung: busy past its task's deadline, though alive
    slots.deadlines[1] = 200.0  # busy within its deadline
    assert slots.stuck(104.0, silence_s=10.0) == []
    for index in (0, 1):
        slots.alive[index] = 106.0  # these two show they run; 103 (idle) does not: stopped
    found = slots.stuck(111.0, silence_s=10.0)
    assert [pid for pid, _ in found] == [101, 103] and "deadline" in found[0][1] and "stopped" in found[1][1]
    assert slots.stuck(111.0, silence_s=10.0) == []  # each reported once


@pytest.mark.timeout(240)
def test_frozen_compute_processes_are_killed_and_replaced_and_their_blocks_computed(project, monkeypatch):
    monkeypatch.setenv("ILASTIK_DESKTOP__WORKER__COMPUTE_SILENCE_S", "3")  # the worker's configuration
    path, image = project
    pipeline = _pipeline(path)
    expected = pipeline.run(_task(pipeline, image))
    with ZmqWithWorkers(pipeline, workers=1, processes=2, deadline_floor_s=2.0) as ex:
        assert np.array_equal(ex.submit(_task(pipeline, image)).result(timeout=60), expected)
        worker = psutil.Process(ex.procs[0].pid)
        frozen = compute_processes(worker)
        assert len(frozen) == 2
        for process in frozen:
            process.suspend()  # SIGSTOP: every compute process of the only worker
        started = time.monotonic()
        futures = [ex.submit(_task(pipeline, image)) for _ in range(4)]
        assert all(np.array_equal(f.result(timeout=120), expected) for f in futures)
        print(f"blocks computed {time.monotonic() - started:.1f} s after the freeze")
        assert all(map(_gone, frozen))
        assert all(p.status() != psutil.STATUS_STOPPED for p in compute_processes(worker))
    assert all(map(_gone, frozen)) and _gone(worker)


@pytest.mark.timeout(240)
def test_a_frozen_local_worker_is_killed_and_restarted_and_its_blocks_computed(project, tmp_path):
    path, image = project
    pipeline = _pipeline(path)
    expected = pipeline.run(_task(pipeline, image))
    config = Config().replace(local_workers__silence_s=2, worker__heartbeat_s=0.2)
    with ZmqExecutor(bind=f"ipc://{tmp_path}/workers", config=ExecutorConfig(heartbeat_s=0.2)) as ex:
        ex.add_pipeline(pipeline)
        local = LocalWorkers(ex.address, 1, str(tmp_path), config, silence=ex.silence)
        try:
            assert ex.wait_for_workers(1, timeout=90)
            first = local.process
            group = [psutil.Process(first.pid), *compute_processes(psutil.Process(first.pid))]
            os.killpg(first.pid, signal.SIGSTOP)  # the worker and its compute processes
            started = time.monotonic()
            assert np.array_equal(ex.submit(_task(pipeline, image)).result(timeout=120), expected)
            print(f"block computed {time.monotonic() - started:.1f} s after the freeze")
            assert local.process is not first and first.returncode == -signal.SIGKILL
            assert all(map(_gone, group)) and local.failure() is None
        finally:
            local.stop()
        assert local.process.poll() is not None
        wait_for(lambda: all(map(_gone, group)), 10)


@pytest.mark.timeout(180)
def test_a_compute_process_past_its_task_deadline_is_killed_and_the_next_task_gets_a_new_one(project):
    path, image = project
    pipeline = _pipeline(path)
    expected = pipeline.run(_task(pipeline, image))
    config = WorkerConfig(deadline_check_s=0.05)
    with LocalExecutor(pipeline, workers=1, config=config) as executor:
        assert executor.wait_ready(90)
        hung = psutil.Process(executor._slots.pids[0])
        stored = executor._folder.file(pipeline.fingerprint())
        os.unlink(stored)
        os.mkfifo(stored)  # loading the pipeline waits for a writer that never comes: hung, though alive
        with pytest.raises(TransientError, match="deadline"):
            executor.submit(_task(pipeline, image), deadline_s=1.0).result(timeout=60)
        assert executor.killed == 1
        wait_for(lambda: _gone(hung), 10)
        os.unlink(stored)
        executor._folder.save(pipeline, pipeline.fingerprint())
        assert np.array_equal(executor.submit(_task(pipeline, image)).result(timeout=90), expected)
        assert executor._slots.pids[0] not in (0, hung.pid)  # computed by a new process
    assert executor.killed == 1
