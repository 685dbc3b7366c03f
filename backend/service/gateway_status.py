"""What a gateway reports: its counters and the executor's status, typed."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from backend.distributed.executor import ExecutorStatus

COUNTERS = ("hits", "misses", "waited", "computed", "failed", "gateway_s")


@dataclass(frozen=True)
class GatewayStatus:
    """Cache hits and misses, blocks computed, awaited and failed, the gateway's own seconds, the executor."""

    executor: ExecutorStatus
    blocks_in_progress: int
    cache_memory_mb: float | None
    hits: int = 0
    misses: int = 0
    waited: int = 0
    computed: int = 0
    failed: int = 0
    gateway_s: float = 0.0


class Counters:
    """The gateway's counters, safe to add to from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = dict.fromkeys(COUNTERS, 0)

    def add(self, name: str, amount: float = 1) -> None:
        """Count ``amount`` more of ``name``."""
        with self._lock:
            self._values[name] += amount

    def values(self) -> dict[str, float]:
        """The counts now (seconds rounded to milliseconds)."""
        with self._lock:
            values = dict(self._values)
        values["gateway_s"] = round(values["gateway_s"], 3)
        return values
