"""Reference counts of the pipelines an executor holds, so that a retrained classifier's predecessor is dropped.

Each :meth:`~backend.distributed.executor.Executor.add_pipeline` takes a reference and each
``remove_pipeline`` gives one back. A pipeline with no reference left is dropped once none of its tasks is
pending (a task submitted before the release still finds it). Releases are only noted (an append to a deque,
no lock), so they are safe from any thread and from a finalizer that runs while its thread holds a lock; the
executor applies them with :meth:`PipelineRefs.collect` at a point of its choosing.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque

log = logging.getLogger(__name__)


class PipelineRefs:
    """Who still needs which pipeline: references, pending tasks and releases not applied yet."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}  # installed pipelines (0: released, waiting for its tasks to end)
        self._pending: Counter[str] = Counter()
        self._released: deque[str] = deque()
        self._lock = threading.Lock()  # held only briefly, never while calling out

    def add(self, fingerprint: str) -> bool:
        """Take a reference; True if the pipeline is new (the executor installs it then)."""
        with self._lock:
            new = fingerprint not in self._counts
            self._counts[fingerprint] = self._counts.get(fingerprint, 0) + 1
            return new

    def release(self, fingerprint: str) -> None:
        """Give a reference back (applied at the next :meth:`collect`); safe from any thread or finalizer."""
        self._released.append(fingerprint)

    def known(self, fingerprint: str) -> bool:
        """Whether the pipeline is installed (tasks may refer to it)."""
        with self._lock:
            return fingerprint in self._counts

    def fingerprints(self) -> frozenset[str]:
        """The pipelines installed now."""
        with self._lock:
            return frozenset(self._counts)

    def task_started(self, fingerprint: str) -> None:
        """A task of the pipeline is pending: keep the pipeline until it ends."""
        with self._lock:
            self._pending[fingerprint] += 1

    def task_ended(self, fingerprint: str) -> None:
        """A task of the pipeline was settled."""
        with self._lock:
            self._pending[fingerprint] -= 1
            if self._pending[fingerprint] <= 0:
                del self._pending[fingerprint]

    def collect(self) -> list[str]:
        """Apply the releases noted so far; returns the pipelines to drop now (no reference, no pending task),
        which count as unknown from here on."""
        with self._lock:
            while self._released:
                fingerprint = self._released.popleft()
                if self._counts.get(fingerprint, 0) > 0:
                    self._counts[fingerprint] -= 1
                else:
                    log.warning("pipeline %s released more often than added; ignored", fingerprint)
            dropped = [f for f, n in self._counts.items() if n == 0 and not self._pending[f]]
            for fingerprint in dropped:
                del self._counts[fingerprint]
                self._pending.pop(fingerprint, None)
            return dropped
