"""Faults a user loses work to: the real processes of a real export killed (compute process, local
worker, the app itself); the export still ends with the undisturbed output, and nothing is left running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

from backend.cache.block_cache import BlockCache
from backend.cache.redis_server import EmbeddedRedis, RedisSettings
from backend.cache.signing import signing_key
from backend.config import ExecutorConfig
from tests.conftest import REPO, run_cli
from tests.helpers import wait_for
from tests.integration.test_executor import small_project
from tests.integration.workers import compute_processes

FEATURES = ((True, True, True),) * 3 + ((False,) * 3,) * 3  # 9 features: a few seconds of compute


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return small_project(str(tmp_path_factory.mktemp("faults")), shape=(64, 256, 256), selection=FEATURES)[0]


class Run:
    """The app run as a user runs it, its progress read from its progress bar, its process tree watched."""

    def __init__(self, *args: str, env: dict | None = None):
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
        self.process = subprocess.Popen([sys.executable, "-m", "ilastik_desktop", *args], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, env=env, start_new_session=True)
        self.stderr: list[str] = []
        self.done = 0
        self.seen: set[int] = set()  # every process of the tree we ever saw
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for chunk in iter(lambda: self.process.stderr.read1(4096), b""):
            text = chunk.decode(errors="replace")
            self.stderr.append(text)
            counts = re.findall(r"(\d+)/(\d+) \[", text)
            if counts:
                self.done = int(counts[-1][0])

    def tree(self) -> list[psutil.Process]:
        """The app and all its descendants now (remembered in ``seen``)."""
        try:
            procs = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        self.seen.update(p.pid for p in procs)
        return procs

    def find(self, marker: str, timeout: float = 60) -> list[psutil.Process]:
        """Processes of the tree whose command line contains ``marker``."""
        return wait_for(lambda: [p for p in self.tree() if marker in " ".join(_cmdline(p))], timeout, interval=0.05,
                        message=lambda: f"no process with '{marker}' in the tree: {[_cmdline(p) for p in self.tree()]}")

    def wait_progress(self, blocks: int, timeout: float = 120) -> None:
        wait_for(lambda: self.done >= blocks or self.process.poll() is not None, timeout, interval=0.05,
                 message=lambda: f"export did not reach {blocks} blocks (at {self.done})")
        assert self.process.poll() is None, f"the export ended early: {''.join(self.stderr)[-2000:]}"

    def finish(self, timeout: float = 300) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def interrupt(self, sig: int, group: bool = False, timeout: float = 30) -> tuple[int, float]:
        """Send ``sig`` to the app (to its whole process group with ``group``, as a terminal's Ctrl-C does) and
        wait for it to end: its exit code and the seconds it took."""
        started = time.monotonic()
        if group:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)
        code = self.finish(timeout=timeout)
        return code, time.monotonic() - started

    def kill_app(self) -> None:
        """SIGKILL the app alone, as the OOM killer or a user's kill -9 would (its process tree noted first)."""
        self.tree()
        self.process.kill()
        self.process.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL the whole group (cleanup after a failed test)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def alive(pids: set[int]) -> list[str]:
    """The processes among ``pids`` that still run (zombies aside)."""
    left = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid}: {' '.join(_cmdline(proc))[:200]}")
        except psutil.NoSuchProcess:
            pass
    return left


def assert_all_gone(pids: set[int], within: float = 5.0) -> None:
    """Every process of ``pids`` ends (or is a zombie) within ``within`` seconds."""
    wait_for(lambda: alive(pids) == [], within, interval=0.1, message=lambda: f"still running: {alive(pids)}")


def export_args(project: str, out: str) -> list[str]:
    return ["--headless", "--project", project, "--output_format", "npy", "--output_filename_format", out,
            "--block_shape", "32,64,64", "--workers", "2"]


@pytest.fixture(scope="module")
def undisturbed(project, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("undisturbed") / "out")
    run = Run(*export_args(project, out))
    assert run.finish() == 0, "".join(run.stderr)
    return np.load(out + ".npy")


@pytest.mark.timeout(400)
def test_killing_a_compute_process_then_the_local_worker_mid_export_changes_nothing(project, undisturbed, tmp_path):
    out = str(tmp_path / "out")
    run = Run(*export_args(project, out))
    try:
        run.wait_progress(2)
        worker = run.find("ilastik_desktop.cli.worker")[0]
        compute = wait_for(lambda: compute_processes(worker), 30, interval=0.05, message="no compute process")
        run.tree()
        compute[0].kill()  # one compute process of the local worker
        run.wait_progress(run.done + 2)
        run.tree()
        worker.kill()  # the local worker itself; its compute processes must follow it
        assert_all_gone({p.pid for p in compute} | {worker.pid}, within=5)
        assert run.finish() == 0, "".join(run.stderr)
    finally:
        if run.process.poll() is None:
            run.kill()
    stderr = "".join(run.stderr)
    assert "restarting it" in stderr, stderr[-2000:]
    assert np.array_equal(np.load(out + ".npy"), undisturbed)
    assert_all_gone(run.seen - {run.process.pid})


@pytest.mark.timeout(300)
def test_kill_9_of_the_app_mid_export_leaves_nothing_running(project, tmp_path):
    run = Run(*export_args(project, str(tmp_path / "out")))
    try:
        run.wait_progress(2)
        run.find("redis-server")
        run.find("ilastik_desktop.cli.worker")
        assert len(run.tree()) >= 5  # app, redis-server, worker, two compute processes
        run.kill_app()
    finally:
        if run.process.poll() is None:
            run.kill()
    assert_all_gone(run.seen - {run.process.pid}, within=5)
    assert not [name for name in os.listdir(tmp_path) if not name.startswith(".")]  # no finished-looking output


@pytest.mark.timeout(300)
def test_kill_9_of_the_app_during_a_gui_session_leaves_nothing_running(project, tmp_path):
    raw = os.path.join(os.path.dirname(project), "raw.h5/data")
    run = Run(project, "--raw_data", raw, env={"QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path)})
    try:
        run.find("redis-server")
        workers = run.find("ilastik_desktop.cli.worker")
        wait_for(lambda: compute_processes(workers[0]), 60, interval=0.05,
                 message="the local worker started no compute process")
        run.kill_app()
    finally:
        if run.process.poll() is None:
            run.kill()
    assert len(run.seen) >= 4
    assert_all_gone(run.seen - {run.process.pid}, within=5)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupting_an_export_is_quick_and_leaves_nothing(project, tmp_path, how):
    """Ctrl-C in a terminal reaches the whole foreground process group; SIGTERM only the app."""
    run = Run(*export_args(project, str(tmp_path / "out")))
    try:
        run.wait_progress(2)
        run.find("redis-server")
        run.tree()
        code, took = run.interrupt(signal.SIGINT, group=True) if how == "ctrl-c" else run.interrupt(signal.SIGTERM)
    finally:
        if run.process.poll() is None:
            run.kill()
    stderr = "".join(run.stderr)
    assert code == 130, stderr[-2000:]
    assert took < 5, f"took {took:.1f} s"
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert os.listdir(tmp_path) == []  # neither the output nor its hidden partial file
    assert_all_gone(run.seen - {run.process.pid}, within=5)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_standalone_worker_stopped_mid_task_ends_quietly_with_its_compute_processes(project, sig):
    """Ctrl-C in the worker's terminal (SIGINT to its whole process group) or SIGTERM, while it computes."""
    from backend.distributed.zmq_executor import ZmqExecutor
    from tests.integration.test_executor import _pipeline
    from tests.integration.workers import kill_worker, start_worker

    pipeline = _pipeline(project)
    image = np.zeros((64, 256, 256), np.uint8)
    with ZmqExecutor(config=ExecutorConfig(heartbeat_s=0.5)) as ex:
        ex.add_pipeline(pipeline)
        worker = start_worker("--connect", ex.address, processes=2, heartbeat=0.5)
        try:
            assert ex.wait_for_workers(1, timeout=60)
            tree = {worker.pid} | {p.pid for p in psutil.Process(worker.pid).children(recursive=True)}
            compute = compute_processes(psutil.Process(worker.pid))  # warm and idle: the worker registered
            idle = {p.pid: _cpu_s(p) for p in compute}
            futures = [ex.submit(_whole_task(pipeline, image)) for _ in range(6)]
            wait_for(lambda: ex.status().workers[0].in_flight > 0 if ex.status().workers else False, 30,
                     interval=0.05, message="the worker took no task")
            wait_for(lambda: any(_cpu_s(p) - idle[p.pid] >= 0.1 for p in compute), 30, interval=0.02,  # mid-task
                     message=lambda: f"no compute process computes: {[_cpu_s(p) for p in compute]} s of CPU, "
                                     f"tasks failed: {[f.exception() for f in futures if f.done()]}")
            started = time.monotonic()
            os.killpg(worker.pid, sig) if sig == signal.SIGINT else worker.send_signal(sig)
            code = worker.wait(timeout=30)
            took = time.monotonic() - started
            stderr = worker.stderr.read()
        finally:
            kill_worker(worker)
        for future in futures:
            future.cancel()
    assert code == 0, stderr
    assert took < 5, f"took {took:.1f} s"
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert "leaked" not in stderr, stderr[-3000:]  # the warm-up semaphore is cleaned up, not left to the tracker
    assert_all_gone(tree, within=5)


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def _whole_task(pipeline, image):
    """The whole image as one task: about a second of compute (a part without its halo would fail at once)."""
    from backend.compute.pipeline import BlockTask

    return BlockTask("k", "Probabilities", image[..., None], (0, 0, 0), image.shape,
                     tuple((0, n) for n in image.shape), pipeline.fingerprint())


@pytest.mark.timeout(300)
def test_error_entries_of_a_shared_cache_are_checked_and_a_real_one_fails_the_export_in_one_line(tmp_path):
    """Anyone who can write to a ``--redis-url`` cache can write ``<block>:error`` entries: unsigned ones are
    misses (the blocks are computed); one recorded by a run sharing our key fails the export with its message."""
    project = small_project(str(tmp_path), shape=(24, 96, 96))[0]
    config = str(tmp_path / "config")
    with EmbeddedRedis(RedisSettings(maxmemory_mb=64)) as server:
        def export(name: str) -> subprocess.CompletedProcess:
            return run_cli("--headless", "--no-progress", "--project", project, "--output_format", "npy",
                           "--output_filename_format", str(tmp_path / name), "--block_shape", "12,48,48",
                           "--workers", "1", "--redis-url", server.url, "--config-dir", config, timeout=240)

        def replace_blocks(write_error) -> None:
            for block in blocks:
                client.delete(block)
                write_error(block)

        assert export("first").returncode == 0
        client = server.client()
        blocks = [k for k in client.keys("ild:v1:*") if not k.endswith((b":lease", b":error"))]
        assert len(blocks) == 8
        replace_blocks(lambda block: client.set(block + b":error", b"ValueError: planted"))
        planted = export("planted")
        assert planted.returncode == 0 and "8 computed" in planted.stderr, planted.stderr
        assert np.array_equal(np.load(tmp_path / "planted.npy"), np.load(tmp_path / "first.npy"))
        cache = BlockCache(client, key=signing_key(config))
        replace_blocks(lambda block: cache.fail(block.decode(), "ValueError: the raw data is damaged"))
        failed = export("failed")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr
    assert failed.stderr.strip().splitlines() == ["ilastik-desktop: error: the export failed and its partial output "
                                                  "was removed: ValueError: the raw data is damaged"]
