"""Shared helpers for benchmarks: the prototype's benchmark project and process-tree measurements."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import psutil

from backend.compute.features import FEATURE_IDS
from backend.io.synthetic import SyntheticProject, write_synthetic_project

PROTOTYPE_SHAPE = (192, 384, 384)  # z, y, x: the prototype's 384 x 384 x 192 volume
PROTOTYPE_SCALES = (1.0, 3.5, 10.0)


def prototype_project(directory: str, shape=PROTOTYPE_SHAPE, trees: int = 100, forests: int = 2) -> str:
    """The prototype's benchmark: all six features at scales 1.0, 3.5, 10.0 (30 in 3D), 100 trees."""
    os.makedirs(directory, exist_ok=True)
    project = os.path.join(directory, "bench.ilp")
    if os.path.exists(project):
        return project
    spec = SyntheticProject(tuple(shape), tuple((True,) * 3 for _ in FEATURE_IDS), PROTOTYPE_SCALES, seed=3,
                            density=1e-4, label_count=12, label_size=32, trees=trees, forests=forests,
                            chunks=(32, 128, 128), label_colors=((255, 0, 0), (0, 255, 0)))
    return write_synthetic_project(directory, spec, "bench.ilp", "raw.h5")[0]


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run a command; wall seconds and peak resident memory of its whole process tree."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = [0]

    def poll() -> None:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                peak[0] = max(peak[0], rss)
            except psutil.Error:
                pass
            time.sleep(0.1)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    watcher.join(timeout=5)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err[-2000:]}")
    return {"wall_s": round(time.perf_counter() - started, 2), "peak_rss_mb": round(peak[0] / 2**20, 1),
            "stdout": out.strip(), "stderr_tail": err.strip()[-300:]}


def tree_usage(root: psutil.Process) -> dict:
    """Resident memory (MB; in total and of the root, its redis-servers and its other descendants), open files
    and threads of ``root`` and every process below it; processes that end while being read are left out."""
    rss = {"app": 0, "redis": 0, "workers": 0}
    fds = threads = processes = 0
    own = {"app_fds": 0, "app_threads": 0}
    for proc in [root, *root.children(recursive=True)]:
        try:
            with proc.oneshot():
                memory, files, count, name = proc.memory_info().rss, proc.num_fds(), proc.num_threads(), proc.name()
        except psutil.Error:
            continue
        group = "app" if proc.pid == root.pid else "redis" if name.startswith("redis") else "workers"
        rss[group] += memory
        fds, threads, processes = fds + files, threads + count, processes + 1
        if group == "app":
            own = {"app_fds": files, "app_threads": count}
    megabytes = {f"rss_{k}_mb": round(v / 2**20, 1) for k, v in rss.items()}
    return {"rss_mb": round(sum(rss.values()) / 2**20, 1), **megabytes, "fds": fds, "threads": threads,
            "processes": processes, **own}


def report(name: str, rows: list[dict], extra: dict, json_path: str | None = None,
           file_only: dict | None = None) -> None:
    """Print the results as one JSON document and as a table; also write the document, with ``file_only``
    (long series) added, to ``json_path`` if given."""
    document = {"benchmark": name, "rows": rows, **extra}
    if json_path:
        with open(json_path, "w") as f:
            json.dump({**document, **(file_only or {})}, f, indent=1)
    print(json.dumps(document, indent=2))
    keys = [k for k in rows[0] if not isinstance(rows[0][k], (dict, list))]
    widths = [max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys]
    print()
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for r in rows:
        print("  ".join(str(r.get(k, "")).ljust(w) for k, w in zip(keys, widths)))
    sys.stdout.flush()
