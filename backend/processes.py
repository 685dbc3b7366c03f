"""Child processes that never outlive the application, however it ends.

Two mechanisms, both tied to the parent *process* (not to the thread that started the child):
- our own Python children call :func:`watch_parent`: a thread that notices when the parent is gone
  (the child is re-parented) and ends the child within half a second;
- programs we cannot change (redis-server) are started by a :class:`Spawner`, one long-lived thread
  per owner that asks the kernel (Linux PR_SET_PDEATHSIG) to kill them when that thread, and so the
  process, ends. PR_SET_PDEATHSIG fires when the *spawning thread* ends, which is why it is never
  used from short-lived threads.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future

log = logging.getLogger(__name__)


def watch_parent(parent_pid: int, poll_s: float, on_orphaned: Callable[[], None] | None = None,
                 on_poll: Callable[[], None] | None = None) -> threading.Thread:
    """Call ``on_orphaned`` (default: exit at once) within ``poll_s`` of ``parent_pid`` no longer being our parent;
    ``on_poll`` (if given) at every look (a sign of life for whoever watches this process)."""
    def orphaned() -> None:
        os._exit(0)

    def watch() -> None:
        while os.getppid() == parent_pid:
            if on_poll is not None:
                on_poll()
            stop.wait(poll_s)
        (on_orphaned or orphaned)()

    stop = threading.Event()  # never set: the thread lives as long as the process
    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def keep_freed_memory() -> None:
    """In a compute process: let malloc keep freed memory for reuse (Linux, glibc).

    A block's temporaries are a few MB each, and one scale's filter bank holds about 100 MB of them at
    once. Handed back to the kernel when freed (as glibc does below its dynamic thresholds at first,
    always under Dask's MALLOC_TRIM_THRESHOLD_=65536, and for the heap's top above the trim threshold),
    they fault in again for the next scale and block. Blocks below 32 MB come from the heap, whose top
    is kept up to 256 MB: on the benchmark's blocks this took the features from 0.50 to 0.40 us per
    voxel (1.5 M page faults to 46 k) with the same peak memory (bench/compute_core.py).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
    libc.mallopt(M_TRIM_THRESHOLD, 256 * 2**20)


def _die_with_spawning_thread() -> None:
    """In the child before exec: SIGKILL us when the thread that forked us ends (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Spawner:
    """Starts programs from one long-lived thread so that they die with this process (see module doc)."""

    def __init__(self, name: str):
        self._requests: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"spawner-{name}", daemon=True)
        self._thread.start()

    def popen(self, command: list[str], **kwargs) -> subprocess.Popen:
        """``subprocess.Popen(command, **kwargs)`` in its own session, started by the spawner thread."""
        future: Future = Future()
        self._requests.put((command, kwargs, future))
        return future.result(timeout=30)

    def _run(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            command, kwargs, future = request
            try:
                future.set_result(subprocess.Popen(command, preexec_fn=_die_with_spawning_thread,
                                                   start_new_session=True, **kwargs))
            except Exception as exc:  # reported to the caller of popen()
                future.set_exception(exc)

    def close(self) -> None:
        """End the spawner thread (its children must have been stopped first: they die with it)."""
        self._requests.put(None)
        self._thread.join(timeout=5)


def stop_group(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM a child started with ``start_new_session=True`` and its group (and SIGCONT, so that a stopped one
    gets it too); SIGKILL what lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
            if sig == signal.SIGTERM:
                os.killpg(process.pid, signal.SIGCONT)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue
