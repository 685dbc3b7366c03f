"""Why a local worker ended is told from its own last words, not an earlier life's or a quoted source line."""

import sys

from ilastik_desktop.runtime import local_workers
from ilastik_desktop.runtime.local_workers import LocalWorkers
from tests.helpers import wait_for

LAST_WORDS = ("import sys\n"
              "sys.stderr.write('/x/resource_tracker.py:254: UserWarning: 6 leaked semaphores\\n')\n"
              "sys.stderr.write(\"  warnings.warn('resource_tracker: There appear to be %d '\\n\")\n"
              "sys.exit(2)\n")


def test_the_reason_is_this_lifes_last_statement(tmp_path, monkeypatch):
    """A killed worker was reported with "warnings.warn('resource_tracker: ..." (the source line Python quotes
    under a warning), and a worker that printed nothing with the previous life's last line."""
    (tmp_path / "local-workers.log").write_text("an earlier life's last line\n")
    monkeypatch.setattr(local_workers, "worker_command", lambda: [sys.executable, "-c", LAST_WORDS])
    workers = LocalWorkers("ipc:///nowhere", 1, str(tmp_path))
    try:
        reason = wait_for(workers.failure, 60, message="the worker did not end")
    finally:
        workers.stop()
    assert reason.endswith("exited with code 2: /x/resource_tracker.py:254: UserWarning: 6 leaked semaphores"), reason
