"""Scaling benchmark: the prototype's experiment through gateway, Redis and ZeroMQ workers.

    python bench/scaling.py [--shape Z,Y,X] [--workers 1,2] [--engines zeromq,dask] [--block 64] [--dir bench/out]

The prototype's volume (384 x 384 x 192 uint8, 30 3D features, 100 trees) is requested whole through
the gateway in 64^3 blocks, once per engine (our ZeroMQ workers, a Dask LocalCluster) and worker count
(each worker one process, a fresh cache each time).
It reports wall time, summed compute time, per-block overhead (everything that is not computing:
gateway, Redis, ZeroMQ, process hand-over), parallel efficiency, a cached re-request of the full
volume, and the compute core's single-process time on the same blocks without gateway; as JSON, a
table and a PNG plot in the style of the prototype's scaling figure (needs matplotlib:
``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from concurrent.futures import wait

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backend.cache.block_cache import BlockCache  # noqa: E402
from backend.cache.redis_server import EmbeddedRedis, RedisSettings  # noqa: E402
from backend.compute.geometry import BlockGrid, Roi  # noqa: E402
from backend.compute.pipeline import BlockTask, Pipeline  # noqa: E402
from backend.distributed.dask_clusters import DaskSettings, start_dask  # noqa: E402
from backend.distributed.local_executor import LocalExecutor  # noqa: E402
from backend.distributed.zmq_executor import ZmqExecutor  # noqa: E402
from backend.io.project import open_project  # noqa: E402
from backend.io.project_pipeline import build_pipeline  # noqa: E402
from backend.io.sources import DataSource, open_source  # noqa: E402
from backend.service.gateway import BATCH, Gateway, GatewayConfig  # noqa: E402
from bench.common import PROTOTYPE_SHAPE, prototype_project, report  # noqa: E402
from ilastik_desktop.runtime.local_workers import LocalWorkers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def warm_up(gateway_for, pipeline: Pipeline, folder: str) -> None:
    """Compile the workers' kernels on a throw-away volume (other data, so nothing of it is cached)."""
    path = os.path.join(folder, "warm.npy")
    np.save(path, np.random.default_rng(0).integers(0, 255, (64, 128, 128), dtype=np.uint8))
    gateway = gateway_for(open_source(path, axes="zyx"))
    try:
        gateway.request("Probabilities", Roi((0, 0, 0, 0), (1, 64, 128, 128)), BATCH).result(timeout=600)
    finally:
        gateway.close()


@contextlib.contextmanager
def zeromq_engine(count: int, folder: str):
    """Our ZeroMQ executor with ``count`` one-process local workers."""
    with ZmqExecutor(bind="ipc://" + folder + "/w") as ex:
        workers = [LocalWorkers(ex.address, 1, folder) for _ in range(count)]
        try:
            if not ex.wait_for_workers(count, timeout=120):
                raise RuntimeError("workers did not register")
            yield ex
        finally:
            for worker in workers:
                worker.stop()


@contextlib.contextmanager
def dask_engine(count: int, folder: str):
    """A Dask LocalCluster of ``count`` single-threaded worker processes (as ``--dask local:N``)."""
    with start_dask(DaskSettings(address=f"local:{count}")) as ex:
        if not ex.wait_for_workers(count, timeout=120):
            raise RuntimeError("Dask workers did not start")
        yield ex


ENGINES = {"zeromq": zeromq_engine, "dask": dask_engine}


def run_workers(engine: str, count: int, source: DataSource, pipeline: Pipeline, block: int, folder: str) -> dict:
    """Request the whole volume through a fresh cache and ``count`` one-process workers of ``engine``."""
    with EmbeddedRedis(RedisSettings(maxmemory_mb=2048)) as server, ENGINES[engine](count, folder) as ex:
        cache = BlockCache(server.client(socket_timeout=30))

        def gateway_for(src: DataSource) -> Gateway:
            return Gateway(src, pipeline, ex, cache, GatewayConfig(block_shape=(1, block, block, block)))

        warm_up(gateway_for, pipeline, folder)
        gateway = gateway_for(source)
        before = ex.status()
        whole = Roi.from_shape(source.spatial_shape)
        started = time.perf_counter()
        first = gateway.request("Probabilities", whole, BATCH).result(timeout=7200)
        wall = time.perf_counter() - started
        status, after = gateway.status(), ex.status()
        started = time.perf_counter()
        again = gateway.request("Probabilities", whole, BATCH).result(timeout=600)
        cached = time.perf_counter() - started
        assert np.array_equal(first, again)
        gateway.close()
    blocks = status.computed
    compute = after.compute_s - before.compute_s
    overhead = max(wall * count - compute, 0.0) / blocks
    return {"engine": engine, "workers": count, "blocks": blocks, "wall_s": round(wall, 2),
            "compute_s": round(compute, 2),
            "compute_per_block_s": round(compute / blocks, 3), "overhead_per_block_s": round(overhead, 4),
            "overhead_pct": round(100 * overhead / (compute / blocks), 2),
            "gateway_per_block_ms": round(1000 * status.gateway_s / blocks, 2), "cached_s": round(cached, 3),
            "cached_speedup": round(wall / cached, 1)}


def run_single_process(source: DataSource, pipeline: Pipeline, block: int) -> dict:
    """The compute core alone: one local process over the same blocks, no gateway, cache or ZeroMQ."""
    grid = BlockGrid(source.spatial_shape, (1, block, block, block), (0,) + pipeline.halo)
    with LocalExecutor(pipeline, workers=1) as ex:
        def task(b) -> BlockTask:
            return BlockTask("b", "Probabilities", source.read(b.halo_roi)[0], b.halo_roi.start[1:],
                             source.spatial_shape[1:], tuple(zip(b.roi.start[1:], b.roi.stop[1:])), ex.fingerprint)

        blocks = list(grid.blocks_in(grid.image))
        ex.submit(task(blocks[0])).result()  # compile
        ex.compute_s = 0.0
        started = time.perf_counter()
        pending = []
        for b in blocks:
            pending.append(ex.submit(task(b)))
            if len(pending) >= 2:
                wait(pending[:1])
                pending = pending[1:]
        wait(pending)
        return {"run": "compute core, 1 process", "wall_s": round(time.perf_counter() - started, 2),
                "compute_s": round(ex.compute_s, 2)}


def plot(rows: list[dict], single: dict, path: str) -> str | None:
    """The prototype's figure: wall clock, accumulated processing and perfect scaling over workers."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    counts = [r["workers"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.plot(counts, [r["wall_s"] for r in rows], "o-", color="#4466cc", label="wall clock")
    ax.plot(counts, [r["compute_s"] for r in rows], "o-", color="#bb3322", label="accumulated processing")
    ax.plot(counts, [rows[0]["wall_s"] / n for n in counts], "o-", color="#ee9922", label="perfect scaling")
    ax.axhline(single["wall_s"], color="#777777", linestyle="--", label="compute core, 1 process, no gateway")
    ax.set_xlabel("Number of workers", style="italic")
    ax.set_ylabel("Time [s]", style="italic")
    ax.set_xticks(counts)
    ax.set_ylim(0, 1.15 * max(single["wall_s"], *(r["compute_s"] for r in rows), rows[0]["wall_s"]))
    ax.grid(True, color="#dddddd")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 1.15), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default=",".join(map(str, PROTOTYPE_SHAPE)), help="z,y,x of the volume")
    ap.add_argument("--workers", default="1,2", help="worker counts to try (default 1,2)")
    ap.add_argument("--engines", default="zeromq,dask", help="engines to try (default zeromq,dask)")
    ap.add_argument("--block", type=int, default=64, help="cubic block edge (default 64, as the prototype)")
    ap.add_argument("--dir", default=os.path.join(HERE, "out"))
    a = ap.parse_args()
    shape = tuple(int(v) for v in a.shape.split(","))
    work = os.path.join(a.dir, "compute_core_" + "x".join(map(str, shape)))
    project = open_project(prototype_project(work, shape))
    source = open_source(os.path.join(work, "raw.h5/data"))
    pipeline = build_pipeline(project, 1, True)
    with tempfile.TemporaryDirectory(prefix="ilastik-scaling-") as folder:
        rows = [run_workers(engine, int(n), source, pipeline, a.block, folder)
                for engine in a.engines.split(",") for n in a.workers.split(",")]
    single = run_single_process(source, pipeline, a.block)
    for r in rows:
        first = next(f for f in rows if f["engine"] == r["engine"])
        r["efficiency_pct"] = round(100 * first["wall_s"] / (r["workers"] * r["wall_s"]) * first["workers"], 1)
    figure = plot([r for r in rows if r["engine"] == rows[0]["engine"]], single, os.path.join(a.dir, "scaling.png"))
    report("scaling", rows, {"shape_zyx": shape, "block": a.block, "single_process": single, "plot": figure,
                             "gateway_vs_single_process_1_worker": round(rows[0]["wall_s"] / single["wall_s"], 3)})


if __name__ == "__main__":
    main()
