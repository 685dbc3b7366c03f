"""``/metrics`` in Prometheus' text format: blocks, cache, queue, workers and request latency of one server."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from backend.distributed.executor import ZmqStatus
from backend.service.gateway_status import GatewayStatus

PRIORITY_NAMES = {0: "visible", 1: "side_view", 2: "prefetch", 3: "batch"}


class _GatewayCollector:
    """Reads the gateways' and the executor's counters at each scrape (nothing is counted twice)."""

    def __init__(self, statuses: Callable[[], list[GatewayStatus]]):
        self.statuses = statuses

    def collect(self) -> Iterable:
        statuses = self.statuses()
        for name, key, text in (("ilastik_blocks_computed", "computed", "blocks computed by the workers"),
                                ("ilastik_cache_hits", "hits", "blocks served from the cache"),
                                ("ilastik_cache_misses", "misses", "blocks claimed for computing"),
                                ("ilastik_blocks_failed", "failed", "blocks whose computation failed")):
            family = CounterMetricFamily(name, text)
            family.add_metric([], sum(getattr(s, key) for s in statuses))
            yield family
        executor = statuses[0].executor if statuses else None
        queue = GaugeMetricFamily("ilastik_queue_depth", "blocks waiting for a worker, by priority",
                                  labels=["priority"])
        by_priority = executor.queued_by_priority if isinstance(executor, ZmqStatus) else {}
        for priority, name in PRIORITY_NAMES.items():
            queue.add_metric([name], by_priority.get(priority, 0))
        yield queue
        workers = executor.workers if executor is not None else ()
        yield GaugeMetricFamily("ilastik_workers", "registered workers", value=len(workers))
        yield GaugeMetricFamily("ilastik_worker_processes", "compute processes of the registered workers",
                                value=sum(w.processes for w in workers))
        yield GaugeMetricFamily("ilastik_blocks_in_progress", "blocks being looked up, computed or awaited",
                                value=sum(s.blocks_in_progress for s in statuses))


class Metrics:
    """The server's own registry (no global state): gateway counters plus a request latency histogram."""

    def __init__(self, statuses: Callable[[], list[GatewayStatus]]):
        self.registry = CollectorRegistry()
        self.registry.register(_GatewayCollector(statuses))
        self.latency = Histogram("ilastik_http_request_seconds", "time to answer HTTP requests, by route",
                                 ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

    def observe(self, route: str, seconds: float) -> None:
        """Record one answered request."""
        self.latency.labels(route=route).observe(seconds)

    def exposition(self) -> bytes:
        """The current values in Prometheus' text format."""
        return generate_latest(self.registry)
