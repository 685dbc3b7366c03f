"""Gateway throughput: blocks per second one gateway sustains when computing costs nothing.

    python bench/gateway_throughput.py [--connections 1,2,4,8] [--small 4096] [--large 128] [--repeat 1]
                                       [--processes 4] [--engine zeromq|dask] [--json bench/out/gateway_throughput.json]

Real worker processes (``--instant-worker``, below; at most 8, each with its share of the connections) speak
the ZeroMQ worker protocol and answer every task at once with the same block, so what is measured is the
gateway alone: cutting the request into blocks, the Redis look-up and claim, dispatch over ZeroMQ, settling
the futures, storing every result in Redis (lz4 and signature included) and assembling the region. Two result
sizes: small (8^3 blocks, 4 KiB of float32 per result: the bookkeeping rate) and large (64^3 x 2 float32, 2
MiB per result, random values that do not compress: the data rate, compared with the machine's memory-copy
bandwidth). Each is then requested again, all from the cache. CPU seconds are the gateway process's (every
thread: gateway, executor, notices; with Dask also the LocalCluster's scheduler), the redis-server's and the
worker processes', per block.

With ``--engine dask`` the workers are a Dask LocalCluster (as ``--dask local:N``) of ``--connections``
single-threaded worker processes whose pipeline plugin answers every task at once (:class:`InstantPlugin`):
what is measured is the gateway plus Dask's scheduler, client and worker hand-over; the wall time per block
is then all overhead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from unittest import mock

import numpy as np
import psutil
import zmq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backend.cache.block_cache import BlockCache  # noqa: E402
from backend.cache.redis_server import EmbeddedRedis, RedisSettings  # noqa: E402
from backend.compute.features import FeatureSet, FeatureSpec  # noqa: E402
from backend.compute.geometry import Roi  # noqa: E402
from backend.compute.pipeline import Pipeline  # noqa: E402
from backend.distributed import dask_executor  # noqa: E402
from backend.distributed.dask_clusters import DaskSettings, start_dask  # noqa: E402
from backend.distributed.protocol import decode, encode  # noqa: E402
from backend.distributed.zmq_executor import ZmqExecutor  # noqa: E402
from backend.io.sources.arrays import ArraySource  # noqa: E402
from backend.service.gateway import BATCH, Gateway, GatewayConfig  # noqa: E402
from bench.common import report  # noqa: E402

LABELS = 2  # result channels: Probabilities of two labels, float32
SIZES = {"small": 8, "large": 64}  # block edge of each result size


def trivial_pipeline() -> Pipeline:
    """A pipeline the gateway can key, plan halos for and check results against (one feature, no forest):
    the instant workers never run it."""
    return Pipeline(FeatureSet((FeatureSpec("GaussianSmoothing", 0.7, False),), 1, True), None, (), LABELS)


def random_block(fields: dict, blocks: dict) -> list[np.ndarray]:
    """An instant worker's answer to a TASK: the same random block for every task of its shape (float32, the
    pipeline's channels), kept in ``blocks``."""
    shape = tuple(b - a for a, b in fields["target"]) + (LABELS,)
    if shape not in blocks:
        blocks[shape] = np.random.default_rng(os.getpid()).random(shape, dtype=np.float32)
    return [blocks[shape]]


def run_instant_worker(address: str, processes: int, connections: int,
                       answer: Callable[[dict, dict], list] = random_block) -> None:
    """A worker process with ``connections`` connections to the gateway (each a worker to it) that answers
    every TASK at once with ``answer(task fields, a dict it may keep blocks in)``, until the gateway says
    goodbye or goes silent for 10 s."""
    context = zmq.Context()
    poller = zmq.Poller()
    sockets = [context.socket(zmq.DEALER) for _ in range(connections)]
    for sock in sockets:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        sock.send_multipart(encode("READY", {"processes": processes, "version": "ilastik-desktop/1",
                                             "host": platform.node(), "pid": os.getpid(), "heartbeat_s": 1.0}))
        poller.register(sock, zmq.POLLIN)
    blocks: dict[tuple[int, ...], np.ndarray] = {}
    last_heard = last_beat = time.monotonic()
    while time.monotonic() - last_heard < 10 and sockets:
        ready = [sock for sock, _ in poller.poll(500)]
        if ready:
            last_heard = time.monotonic()
        for sock in ready:
            message = decode(sock.recv_multipart())
            if message.type == "DISCONNECT":
                poller.unregister(sock)
                sockets.remove(sock)
                sock.close(linger=0)
            elif message.type == "TASK":
                sock.send_multipart(encode("RESULT", {"key": message.fields["key"], "compute_s": 0.0},
                                           answer(message.fields, blocks)))
        if last_heard - last_beat > 1.0:
            last_beat = last_heard
            for sock in sockets:
                sock.send_multipart(encode("HEARTBEAT"))
    for sock in sockets:
        sock.close(linger=0)
    context.term()


class InstantPipeline:
    """Stands in for the pipeline on a Dask worker: the same block of the task's shape, at once."""

    def __init__(self) -> None:
        self.blocks: dict[tuple[int, ...], np.ndarray] = {}

    def run(self, task, workspace: dict) -> np.ndarray:
        """A constant float32 block of the task's target shape and the pipeline's channels."""
        shape = tuple(b - a for a, b in task.target) + (LABELS,)
        if shape not in self.blocks:
            self.blocks[shape] = np.random.default_rng(0).random(shape, dtype=np.float32)
        return self.blocks[shape]


class InstantPlugin(dask_executor.PipelinePlugin):
    """The Dask executor's pipeline plugin with :class:`InstantPipeline` instead of the real one (nothing
    built or compiled)."""

    def setup(self, worker) -> None:
        """Hold the instant pipeline and the per-thread workspaces."""
        self.pipeline = InstantPipeline()
        self._local = threading.local()


@contextlib.contextmanager
def instant_dask(workers: int):
    """A Dask executor on a LocalCluster of ``workers`` processes whose pipelines answer at once."""
    with mock.patch.object(dask_executor, "PipelinePlugin", InstantPlugin), \
            start_dask(DaskSettings(address=f"local:{workers}")) as executor:
        if not executor.wait_for_workers(workers, timeout=300):
            raise RuntimeError("the Dask workers did not start")
        yield executor


@contextlib.contextmanager
def instant_zeromq(connections: int, processes: int, folder: str, name: str):
    """A ZeroMQ executor with ``connections`` instant worker connections."""
    with ZmqExecutor(bind=f"ipc://{folder}/{name}") as executor, instant_workers(executor, connections, processes):
        yield executor


@contextlib.contextmanager
def instant_workers(executor: ZmqExecutor, connections: int, processes: int, most_processes: int = 8,
                    script: str = __file__, extra: tuple[str, ...] = ()):
    """``connections`` instant worker connections (``processes`` task slots each) registered with ``executor``,
    from at most ``most_processes`` worker processes running ``script --instant-worker ... *extra``."""
    spread = min(connections, most_processes)
    shares = [connections // spread + (i < connections % spread) for i in range(spread)]
    procs = [subprocess.Popen([sys.executable, os.path.abspath(script), "--instant-worker", executor.address,
                               "--processes", str(processes), "--per-process", str(share), *extra])
             for share in shares]
    try:
        if not executor.wait_for_workers(connections * processes, timeout=60):
            raise RuntimeError("the instant workers did not register")
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


def memcpy_gb_s() -> float:
    """The machine's memory-copy bandwidth: best of five numpy copies of a 256 MB array, in GB/s."""
    source = np.ones(256 << 20, np.uint8)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return round(source.nbytes / best / 1e9, 2)


def volume_for(blocks: int, edge: int) -> tuple[int, int, int]:
    """A z, y, x shape of about ``blocks`` blocks of ``edge`` voxels (x and y grow first)."""
    side = max(1, round(blocks ** (1 / 3)))
    z = max(1, blocks // (side * side))
    return (z * edge, side * edge, side * edge)


def cpu_seconds(redis_pid: int) -> tuple[float, float, float]:
    """CPU seconds (user + system) used so far by this process, by the redis-server and by the worker
    processes (every other process below this one)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    times = psutil.Process(redis_pid).cpu_times()
    workers = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid != redis_pid:
                workers += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return own.ru_utime + own.ru_stime, times.user + times.system, workers


def timed_request(gateway: Gateway, roi: Roi, redis_pid: int) -> dict:
    """Request ``roi`` whole at batch priority; wall and CPU seconds of the gateway and Redis."""
    cpu_before, redis_before, workers_before = cpu_seconds(redis_pid)
    started = time.perf_counter()
    gateway.request("Probabilities", roi, BATCH).result(timeout=3600)
    wall = time.perf_counter() - started
    cpu_after, redis_after, workers_after = cpu_seconds(redis_pid)
    return {"wall": wall, "cpu": cpu_after - cpu_before, "redis_cpu": redis_after - redis_before,
            "workers_cpu": workers_after - workers_before}


def run_case(connections: int, size: str, blocks: int, processes: int, folder: str, copy_gb_s: float,
             engine: str = "zeromq") -> list[dict]:
    """One result size through ``connections`` instant workers (Dask: worker processes) of ``engine``:
    computed once, then again all from the cache."""
    edge = SIZES[size]
    shape = volume_for(blocks, edge)
    source = ArraySource(np.zeros(shape, np.uint8), "zyx")
    workers = instant_dask(connections) if engine == "dask" else \
        instant_zeromq(connections, processes, folder, f"w{connections}{size}")
    with EmbeddedRedis(RedisSettings(maxmemory_mb=4096)) as server, workers as executor:
        gateway = Gateway(source, trivial_pipeline(), executor, BlockCache(server.client(socket_timeout=30)),
                          GatewayConfig(block_shape=(1, edge, edge, edge)))
        try:
            whole = Roi.from_shape(source.spatial_shape)
            warm = Roi((0, 0, 0, 0), (1, edge, edge, min(shape[2], 8 * edge)))
            gateway.request("Probabilities", warm, BATCH).result(timeout=600)  # the pipeline reaches every worker
            computed = timed_request(gateway, whole, server.pid)
            count = gateway.status().computed
            cached = timed_request(gateway, whole, server.pid)
        finally:
            gateway.close()
    count -= len(list(gateway.grid.blocks_in(warm)))
    block_bytes = edge ** 3 * LABELS * 4
    rows = []
    for case, numbers in (("computed", computed), ("cached", cached)):
        rate = count / numbers["wall"]
        rows.append({"engine": engine, "size": size, "case": case, "connections": connections, "blocks": count,
                     "wall_s": round(numbers["wall"], 3), "blocks_per_s": round(rate, 1),
                     "wall_ms_per_block": round(1000 / rate, 3),
                     "gateway_cpu_ms_per_block": round(1000 * numbers["cpu"] / count, 3),
                     "redis_cpu_ms_per_block": round(1000 * numbers["redis_cpu"] / count, 3),
                     "workers_cpu_ms_per_block": round(1000 * numbers["workers_cpu"] / count, 3),
                     "data_mb_s": round(rate * block_bytes / 1e6, 1),
                     "of_memcpy_pct": round(100 * rate * block_bytes / (copy_gb_s * 1e9), 2)})
    return rows


def main() -> None:
    """Parse the arguments; run the instant worker, or every case and report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", default="1,2,4,8", help="worker connections, comma-separated (spread "
                        "over at most 8 worker processes)")
    parser.add_argument("--small", type=int, default=4096, help="blocks of the small-result case")
    parser.add_argument("--large", type=int, default=128, help="blocks of the large-result case")
    parser.add_argument("--processes", type=int, default=4, help="task slots each worker announces (2 tasks each)")
    parser.add_argument("--repeat", type=int, default=1, help="run every case this many times (spread)")
    parser.add_argument("--engine", default="zeromq", choices=("zeromq", "dask"),
                        help="our ZeroMQ workers, or a Dask LocalCluster of --connections worker processes")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--instant-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--per-process", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.instant_worker:
        run_instant_worker(args.instant_worker, args.processes, args.per_process)
        return
    copy_gb_s = memcpy_gb_s()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gwbench") as folder:
        for _ in range(args.repeat):
            for connections in (int(n) for n in args.connections.split(",")):
                for size, blocks in (("small", args.small), ("large", args.large)):
                    if blocks > 0:
                        rows += run_case(connections, size, blocks, args.processes, folder, copy_gb_s, args.engine)
    report("gateway_throughput", rows, {"memcpy_gb_s": copy_gb_s, "cores": os.cpu_count(),
                                        "load_average": [round(v, 2) for v in os.getloadavg()],
                                        "processes_per_connection": args.processes}, args.json)


if __name__ == "__main__":
    main()
