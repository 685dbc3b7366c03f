"""Batch mode throughput: blocks per second one gateway coordinates when the workers write the output themselves.

    python bench/batch_mode.py [--connections 1,4,8] [--blocks 4096] [--edge 8] [--repeat 2]
                               [--json bench/out/batch_mode.json]

The gateway is the real one running a real ``--shared-filesystem`` export (``backend.service.shared_export``)
with a real embedded redis-server: it creates the chunk-aligned zarr output, claims the blocks in batches,
sends each task (raw data by reference, output chunk named), and marks each block written in the cache. The
workers are real processes (``--instant-worker``, below) speaking the ZeroMQ worker protocol that answer every
task at once with "written": in case ``notice`` they write nothing (the gateway's bookkeeping alone); in case
``chunk`` they write the task's chunk for real (a constant block through the output's codec and an atomic
rename, as a worker does), on the same cores as the gateway; in case ``h5`` they send the constant block to
the export's HDF5 writer process and answer once it confirms (``--output_format hdf5``). CPU seconds are the
gateway process's (every thread) and the redis-server's, per block; ``result_bytes`` are the bytes of results
that reached the gateway.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backend.cache.block_cache import BlockCache  # noqa: E402
from backend.cache.redis_server import EmbeddedRedis, RedisSettings  # noqa: E402
from backend.compute.pipeline import WRITTEN  # noqa: E402
from backend.distributed.zmq_executor import ZmqExecutor  # noqa: E402
from backend.io.chunk_store import write_block  # noqa: E402
from backend.io.h5_writer import is_writer_target, send_block  # noqa: E402
from backend.io.sources.arrays import ArraySource  # noqa: E402
from backend.service.gateway import Gateway, GatewayConfig  # noqa: E402
from backend.service.shared_export import export_shared, export_shared_h5  # noqa: E402
from bench.common import report  # noqa: E402
from bench.gateway_throughput import (  # noqa: E402
    LABELS,
    cpu_seconds,
    instant_workers,
    run_instant_worker,
    trivial_pipeline,
    volume_for,
)


def written(fields: dict, blocks: dict) -> list:
    """An instant worker's answer in case notice: "written", writing nothing."""
    return [WRITTEN]


def write_then_written(fields: dict, blocks: dict) -> list:
    """An instant worker's answer in cases chunk and h5: a constant block written (zarr chunk) or sent to the
    export's HDF5 writer process (confirmed), then "written"."""
    shape = tuple(b - a for a, b in fields["target"]) + (LABELS,)
    if shape not in blocks:
        blocks[shape] = np.full(shape, 0.5, np.float32)
    target = fields["output"]
    if is_writer_target(target):
        send_block(target, blocks[shape])
    else:
        write_block(target, blocks[shape])
    return [WRITTEN]


def run_case(case: str, connections: int, blocks: int, edge: int, processes: int, folder: str) -> dict:
    """One shared export of about ``blocks`` blocks through ``connections`` instant workers."""
    shape = volume_for(blocks, edge)
    source = ArraySource(np.zeros(shape, np.uint8), "zyx")
    with EmbeddedRedis(RedisSettings(maxmemory_mb=1024)) as server, \
            ZmqExecutor(bind=f"ipc://{folder}/w{case}{connections}") as executor, \
            instant_workers(executor, connections, processes, script=__file__,
                            extra=("--write",) if case in ("chunk", "h5") else ()):
        gateway = Gateway(source, trivial_pipeline(), executor, BlockCache(server.client(socket_timeout=30)),
                          GatewayConfig(block_shape=(1, edge, edge, edge)))
        try:
            path = os.path.join(folder, f"{case}{connections}-{time.monotonic_ns()}")
            cpu_before, redis_before, _ = cpu_seconds(server.pid)
            started = time.perf_counter()
            if case == "h5":
                counts = export_shared_h5(gateway, path + ".h5", "Probabilities", None, "exported_data",
                                          8 * connections * processes, lambda count: None, lambda: None)
            else:
                counts = export_shared(gateway, path + ".zarr", "Probabilities", None, None,
                                       8 * connections * processes, lambda count: None, lambda: None)
            wall = time.perf_counter() - started
            cpu_after, redis_after, _ = cpu_seconds(server.pid)
            keys = server.client().dbsize()
            redis_mb = server.client().info("memory")["used_memory"] / 2**20
        finally:
            gateway.close()
    done = counts.computed
    return {"case": case, "connections": connections, "blocks": done, "wall_s": round(wall, 3),
            "blocks_per_s": round(done / wall, 1),
            "gateway_cpu_ms_per_block": round(1000 * (cpu_after - cpu_before) / done, 3),
            "redis_cpu_ms_per_block": round(1000 * (redis_after - redis_before) / done, 3),
            "result_bytes": counts.result_bytes, "redis_keys": keys, "redis_mb": round(redis_mb, 1)}


def main() -> None:
    """Parse the arguments; run the instant worker, or every case and report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", default="1,4,8", help="worker connections, comma-separated")
    parser.add_argument("--blocks", type=int, default=4096, help="blocks per export (about)")
    parser.add_argument("--edge", type=int, default=8, help="block edge in voxels")
    parser.add_argument("--processes", type=int, default=4, help="task slots each worker announces")
    parser.add_argument("--repeat", type=int, default=1, help="run every case this many times")
    parser.add_argument("--cases", default="notice,chunk", help="notice (write nothing), chunk (write chunks), h5 "
                        "(send blocks to the HDF5 writer process)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--instant-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--per-process", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.instant_worker:
        run_instant_worker(args.instant_worker, args.processes, args.per_process,
                           write_then_written if args.write else written)
        return
    import numcodecs  # noqa: F401  (imported before the clock starts: the workers' codec, the output's metadata)
    import zarr  # noqa: F401

    rows = []
    with tempfile.TemporaryDirectory(prefix="batchbench") as folder:
        for _ in range(args.repeat):
            for case in args.cases.split(","):
                for connections in (int(n) for n in args.connections.split(",")):
                    rows.append(run_case(case, connections, args.blocks, args.edge, args.processes, folder))
    report("batch_mode", rows, {"cores": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
                                "edge": args.edge, "processes_per_connection": args.processes}, args.json)


if __name__ == "__main__":
    main()
