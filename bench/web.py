"""Web service benchmark: the prototype volume's probabilities read whole over HTTP by zarr clients.

    python bench/web.py [--shape Z,Y,X] [--workers 2] [--clients 1,8] [--dir bench/out]

Needs fsspec (in the test extras: pip install -e ".[test]").

For each client count, a fresh ``ilastik-desktop serve`` (its own redis-server and workers) is read whole
by that many concurrent zarr-python clients over fsspec's HTTP store: cold (every block computed on the
workers, once) and then warm (every block from the cache). Cold is compared with the headless export's
own time for the same volume and blocks (overhead of HTTP, chunk encoding and client decoding); warm
with the same clients reading the exported zarr from disk. Every read is checked against the export.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import zarr

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import PROTOTYPE_SHAPE, measure, prototype_project, report  # noqa: E402
from tests.integration.webserver import ServeProcess  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def export(project: str, folder: str, workers: int) -> tuple[float, float, np.ndarray, str]:
    """Headless zarr export: its own seconds for the blocks, wall seconds, the values (c, z, y, x), the path."""
    pattern = os.path.join(folder, "export")
    run = measure([sys.executable, "-m", "ilastik_desktop", "--headless", "--no-progress", "--project", project,
                   "--workers", str(workers), "--output_format", "zarr", "--output_filename_format", pattern])
    seconds = float(re.search(r"blocks, ([0-9.]+) s", run["stderr_tail"]).group(1))
    path = pattern + ".zarr"
    values = zarr.open_array(os.path.join(path, "0"), mode="r")[:]  # an OME-Zarr image, already c, z, y, x
    return seconds, run["wall_s"], values, path


def read_all(open_array, clients: int) -> tuple[float, list[np.ndarray]]:
    """``clients`` threads each read the whole array at once; seconds until the last is done, and the values."""
    arrays = [open_array() for _ in range(clients)]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        values = list(pool.map(lambda a: a[:], arrays))
    return time.perf_counter() - started, values


def over_http(project: str, workers: int, clients: int, expected: np.ndarray) -> dict:
    """Cold and warm reads through a fresh server; blocks computed from its metrics."""
    with ServeProcess(project, "--workers", str(workers), "--cache-mb", "2048", timeout=300) as server:
        def open_array():
            return zarr.open_array(server.url + "/zarr/0/probabilities/0", mode="r", zarr_format=2)

        cold, values = read_all(open_array, clients)
        assert all(np.array_equal(v, expected) for v in values), "served values differ from the export"
        warm, values = read_all(open_array, clients)
        assert all(np.array_equal(v, expected) for v in values), "cached values differ from the export"
        metrics = server.get("/metrics")[1].decode()
    computed = re.search(r"^ilastik_blocks_computed_total (\S+)", metrics, re.M)
    return {"cold_s": round(cold, 2), "warm_s": round(warm, 3),
            "blocks_computed": int(float(computed.group(1))) if computed else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default=",".join(map(str, PROTOTYPE_SHAPE)), help="z,y,x of the volume")
    ap.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    ap.add_argument("--clients", default="1,8", help="concurrent client counts (default 1,8)")
    ap.add_argument("--dir", default=os.path.join(HERE, "out"))
    a = ap.parse_args()
    shape = tuple(int(v) for v in a.shape.split(","))
    folder = os.path.join(a.dir, "web_" + "x".join(map(str, shape)))
    project = prototype_project(folder, shape)
    export_s, export_wall, expected, exported = export(project, folder, a.workers)
    megabytes = expected.nbytes / 1e6
    rows = []
    for clients in (int(c) for c in a.clients.split(",")):
        http = over_http(project, a.workers, clients, expected)
        disk_s, values = read_all(lambda: zarr.open_array(os.path.join(exported, "0"), mode="r"), clients)
        assert all(np.array_equal(v, expected) for v in values)
        rows.append({"clients": clients, "export_s": export_s, "http_cold_s": http["cold_s"],
                     "cold_overhead_pct": round(100 * (http["cold_s"] / export_s - 1), 1),
                     "blocks_computed": http["blocks_computed"], "http_warm_s": http["warm_s"],
                     "http_warm_MB_s": round(clients * megabytes / http["warm_s"], 1),
                     "disk_zarr_MB_s": round(clients * megabytes / disk_s, 1),
                     "warm_vs_disk": round(disk_s / http["warm_s"], 2)})
    report("web", rows, {"shape_zyx": shape, "workers": a.workers, "megabytes_per_read": round(megabytes, 1),
                         "export_wall_s": export_wall, "cpu_count": os.cpu_count()})


if __name__ == "__main__":
    main()
