"""Child processes that never outlive the application."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys


def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask the kernel to SIGTERM this process when its parent dies (Linux); exit now if it already did."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if parent_pid is not None and os.getppid() != parent_pid:
        raise SystemExit(0)


def stop_group(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM a child started with ``start_new_session=True`` and its group; SIGKILL what lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue
