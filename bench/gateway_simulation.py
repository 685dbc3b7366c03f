"""The 1 TB plan by simulation: a million blocks through one gateway's bookkeeping with instant workers.

    python bench/gateway_simulation.py [--blocks 1000000] [--request 10000] [--every 100000]
                                       [--maxmemory-mb 256] [--json bench/out/gateway_simulation.json]

The gateway is the real one, with its real claims, leases, watchdog and notices against a real
redis-server; only the workers are replaced by an in-process executor that answers every task at once
(:class:`InstantExecutor`, settling each round of tasks as one batch, as the ZeroMQ executor does per
turn). The image is requested in slabs of ``--request`` blocks (4^3 voxels each, two float32 channels)
until ``--blocks`` blocks were computed. Reported: the gateway's resident memory every ``--every``
blocks and its growth, the blocks still in the gateway's table, the Redis keys at the end (bounded by the
server's ``maxmemory`` and LRU eviction) and the blocks per second.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
from concurrent.futures import Future

import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backend.cache.block_cache import BlockCache  # noqa: E402
from backend.cache.redis_server import EmbeddedRedis, RedisSettings  # noqa: E402
from backend.compute.geometry import Roi  # noqa: E402
from backend.compute.pipeline import BlockTask, Pipeline  # noqa: E402
from backend.distributed.executor import Executor, ExecutorStatus  # noqa: E402
from backend.distributed.futures import TaskFuture, settle  # noqa: E402
from backend.distributed.settling import settle_all  # noqa: E402
from backend.io.sources.arrays import ArraySource  # noqa: E402
from backend.service.gateway import BATCH, Gateway, GatewayConfig  # noqa: E402
from bench.common import report  # noqa: E402
from bench.gateway_throughput import LABELS, trivial_pipeline  # noqa: E402

EDGE = 4  # block edge in voxels
ROUND = 256  # tasks answered per round at most (a busy executor turn)


class InstantExecutor(Executor):
    """Answers every task at once with zeros of its shape, on one thread, up to ``ROUND`` queued tasks per batch."""

    def __init__(self) -> None:
        self._queue: list[tuple[BlockTask, TaskFuture]] = []
        self._changed = threading.Condition()
        self._closed = False
        self.submitted = self.done = 0
        self._thread = threading.Thread(target=self._work, name="instant-executor", daemon=True)
        self._thread.start()

    def add_pipeline(self, pipeline: Pipeline) -> str:
        """Nothing to send anywhere: the pipeline's fingerprint."""
        return pipeline.fingerprint()

    def remove_pipeline(self, fingerprint: str) -> None:
        """Nothing kept per pipeline."""

    def submit(self, task: BlockTask, priority: int = 0) -> TaskFuture:
        """Queue ``task``; its future is settled on the next round."""
        future = TaskFuture()
        with self._changed:
            self._queue.append((task, future))
            self.submitted += 1
            self._changed.notify()
        return future

    def cancel(self, future: Future) -> bool:
        """Cancel a task not yet answered."""
        return future.cancel()

    def status(self) -> ExecutorStatus:
        """Submitted and answered tasks."""
        with self._changed:
            return ExecutorStatus("instant", None, queued=len(self._queue), submitted=self.submitted, done=self.done)

    def wait_for_workers(self, processes: int, timeout: float) -> bool:
        """Always ready."""
        return True

    def close(self) -> None:
        """Stop the answering thread."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join(timeout=10)

    def _work(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._closed)
                if self._closed:
                    return
                batch, self._queue = self._queue[:ROUND], self._queue[ROUND:]
                self.done += len(batch)
            settle_all([lambda t=task, f=future: _answer(t, f) for task, future in batch])


def _answer(task: BlockTask, future: TaskFuture) -> None:
    if future.set_running_or_notify_cancel():
        settle(future, np.zeros(tuple(b - a for a, b in task.target) + (LABELS,), np.float32))


def simulate(blocks: int, per_request: int, every: int, maxmemory_mb: int) -> tuple[list[dict], dict]:
    """Push ``blocks`` blocks through a gateway in requests of ``per_request``; RSS samples and totals."""
    side = int(round(per_request ** 0.5))
    slabs = -(-blocks // (side * side))
    shape = (slabs * EDGE, side * EDGE, side * EDGE)  # one z layer of blocks per request
    source = ArraySource(np.zeros(shape, np.uint8), "zyx")
    me = psutil.Process()
    rows: list[dict] = []
    with EmbeddedRedis(RedisSettings(maxmemory_mb=maxmemory_mb)) as server, InstantExecutor() as executor:
        client = server.client(socket_timeout=30)
        gateway = Gateway(source, trivial_pipeline(), executor, BlockCache(client),
                          GatewayConfig(block_shape=(1, EDGE, EDGE, EDGE)))
        gc.collect()
        start_rss, started, done, next_sample = me.memory_info().rss, time.perf_counter(), 0, every
        rows.append({"blocks": 0, "rss_mb": round(start_rss / 2**20, 1), "growth_mb": 0.0, "blocks_per_s": 0})
        for slab in range(slabs):
            roi = Roi((0, slab * EDGE, 0, 0), (1, (slab + 1) * EDGE, side * EDGE, side * EDGE))
            gateway.request("Probabilities", roi, BATCH).result(timeout=600)
            done += side * side
            if done >= next_sample or slab == slabs - 1:
                next_sample += every
                rss = me.memory_info().rss
                rows.append({"blocks": done, "rss_mb": round(rss / 2**20, 1),
                             "growth_mb": round((rss - start_rss) / 2**20, 1),
                             "blocks_per_s": round(done / (time.perf_counter() - started))})
                print(rows[-1], flush=True)
        executor.close()  # its last batch, and so the last cache writes, ended: what stays in Redis stays
        status = gateway.status()
        totals = {"blocks": done, "computed": status.computed, "submitted": executor.status().submitted,
                  "in_progress_at_end": status.blocks_in_progress, "redis_keys_at_end": client.dbsize(),
                  "leases_at_end": sum(1 for _ in client.scan_iter(match="*:lease", count=10_000)),
                  "redis_used_mb": round(client.info("memory")["used_memory"] / 2**20, 1),
                  "redis_maxmemory_mb": maxmemory_mb, "wall_s": round(time.perf_counter() - started, 1),
                  "rss_growth_mb": rows[-1]["growth_mb"]}
        gateway.close()
    return rows, totals


def main() -> None:
    """Run the simulation and report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=1_000_000)
    parser.add_argument("--request", type=int, default=10_000, help="blocks per request")
    parser.add_argument("--every", type=int, default=100_000, help="sample the memory every this many blocks")
    parser.add_argument("--maxmemory-mb", type=int, default=256, help="the redis-server's maxmemory (LRU)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows, totals = simulate(args.blocks, args.request, args.every, args.maxmemory_mb)
    report("gateway_simulation", rows, {"totals": totals, "cores": os.cpu_count()}, args.json)


if __name__ == "__main__":
    main()
