"""``/metrics`` in Prometheus' text format: blocks, cache, queue, workers and request latency of one server."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from backend.distributed.executor import ZmqStatus
from backend.service.gateway_status import GatewayStatus
from backend.web.budget import Budget

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
    """The server's own registry (no global state): gateway counters, request latency, connections dropped or
    refused at the cap, and the memory budget in use."""

    def __init__(self, statuses: Callable[[], list[GatewayStatus]], budget: Budget):
        self.registry = CollectorRegistry()
        self.registry.register(_GatewayCollector(statuses))
        self.latency = Histogram("ilastik_http_request_seconds", "time to answer HTTP requests, by route",
                                 ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.dropped = Counter("ilastik_http_connections_dropped", "connections closed at the connection cap: "
                               "'dropped' (idle or slow, to make room) or 'refused' (all busy)", ["reason"],
                               registry=self.registry)
        self.connections = Gauge("ilastik_http_connections", "open connections", registry=self.registry)
        self._count_connections: Callable[[], int] = lambda: 0
        used = Gauge("ilastik_http_budget_bytes", "memory held by answers being assembled", registry=self.registry)
        used.set_function(lambda: budget.used)
        refused = Gauge("ilastik_http_budget_refused", "requests answered 503: no room in the memory budget in time",
                        registry=self.registry)
        refused.set_function(lambda: budget.refused)

    def observe(self, route: str, seconds: float) -> None:
        """Record one answered request."""
        self.latency.labels(route=route).observe(seconds)

    def connection_dropped(self, reason: str) -> None:
        """Count a connection closed at the cap (``reason``: dropped or refused)."""
        self.dropped.labels(reason=reason).inc()

    def watch_connections(self, count: Callable[[], int]) -> None:
        """Report ``count()`` as the open connections (read by :meth:`sample`)."""
        self._count_connections = count

    def sample(self) -> None:
        """Read the values that only the server's event loop may read (call it there before a scrape)."""
        self.connections.set(self._count_connections())

    def exposition(self) -> bytes:
        """The current values in Prometheus' text format."""
        return generate_latest(self.registry)
