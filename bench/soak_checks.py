"""What the soak benchmark checks: delivered blocks against a fresh computation here, and the sampled series.

:class:`Classifiers` keeps the pipelines a delivered block may have been computed with (bounded: only those
current since the oldest operation still open began); :class:`Checker` recomputes blocks on its own thread
with ``Pipeline.run``, exactly as a worker does, and compares; :func:`evaluate` reads the sampled
series.
"""

from __future__ import annotations

import itertools
import queue
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from backend.compute.geometry import Block, Roi
from backend.compute.pipeline import BlockTask
from backend.io.sources import DataSource
from backend.service.gateway import RAW
from backend.service.snapshot import PipelineSnapshot

if TYPE_CHECKING:
    from bench.soak import Soak


class Classifiers:
    """The gateway's pipeline snapshots by generation, kept while an operation that may see them is open.

    :meth:`note` records the gateway's current snapshot (call it after every swap); :meth:`open` starts an
    operation (a request, an HTTP read, an export) and :meth:`close` ends it. Snapshots older than the one
    current when the oldest open operation began are dropped, so memory stays bounded however long it runs.
    """

    def __init__(self, current: Callable[[], PipelineSnapshot]):
        self.current = current
        self._lock = threading.Lock()
        self._history: list[tuple[int, PipelineSnapshot]] = []  # oldest first
        self._open: dict[int, int] = {}  # operation -> generation when it began
        self._ids = itertools.count()
        self.most_kept = 0
        self.note()

    def note(self) -> int:
        """Record the current snapshot if it is new; its generation."""
        snapshot = self.current()
        with self._lock:
            if not self._history or self._history[-1][1] is not snapshot:
                self._history.append((self._history[-1][0] + 1 if self._history else 0, snapshot))
                self._prune()
            return self._history[-1][0]

    def open(self) -> tuple[int, int]:
        """Begin an operation: its id and the current generation."""
        generation = self.note()
        with self._lock:
            operation = next(self._ids)
            self._open[operation] = generation
            return operation, generation

    def close(self, operation: int) -> None:
        """End an operation; snapshots nobody may see any more are dropped."""
        with self._lock:
            self._open.pop(operation, None)
            self._prune()

    def between(self, first: int, last: int | None = None) -> list[PipelineSnapshot]:
        """The snapshots of generations ``first`` to ``last`` (default: the newest), oldest first."""
        with self._lock:
            return [s for g, s in self._history if g >= first and (last is None or g <= last)]

    def kept(self) -> int:
        """How many snapshots are kept now."""
        with self._lock:
            return len(self._history)

    def _prune(self) -> None:
        oldest = min(self._open.values(), default=self._history[-1][0])
        self._history = [(g, s) for g, s in self._history if g >= oldest]
        self.most_kept = max(self.most_kept, len(self._history))


class Failures:
    """Failed checks, each with what failed, when (seconds into the run) and how; thread-safe."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.items: list[dict] = []
        self._lock = threading.Lock()

    def add(self, what: str, detail: str) -> None:
        """Record a failure of ``what`` (its first word names the kind: hang, request, web ...)."""
        with self._lock:
            self.items.append({"what": what, "at_s": round(time.monotonic() - self.started, 1), "detail": detail})


def expected_block(source: DataSource, snapshot: PipelineSnapshot, kind: str, block: Block) -> np.ndarray:
    """The block's ``(t, z, y, x, c)`` result computed here, from the same raw voxels and halo as the gateway's
    task, with the snapshot's pipeline."""
    halo = block.halo_roi
    task = BlockTask("", kind, source.read(halo)[0], halo.start[1:], source.spatial_shape[1:],
                     tuple(zip(block.roi.start[1:], block.roi.stop[1:])), snapshot.fingerprint)
    return snapshot.pipeline.run(task)[None]


@dataclass
class Job:
    """Delivered parts of one operation to check: ``parts`` are (tzyx ROI, ``(t, z, y, x, c)`` values) in
    blocks of ``block_shape``; they must all equal the results of one of ``candidates``."""

    what: str
    kind: str
    candidates: list[PipelineSnapshot]
    block_shape: tuple[int, int, int, int]
    parts: list[tuple[Roi, np.ndarray]]
    operation: int | None = None  # closed in the Classifiers once checked


class Checker:
    """Checks jobs on its own thread, in order; :meth:`submit` waits while ``backlog`` jobs are queued, so the
    values held for checking stay bounded. Outcomes go to ``counts`` and ``fail(what, detail)``."""

    def __init__(self, source: DataSource, classifiers: Classifiers, fail: Callable[[str, str], None],
                 backlog: int = 16):
        self.source, self.classifiers, self.fail = source, classifiers, fail
        self.counts = {"blocks_checked": 0, "jobs_checked": 0, "wrong_blocks": 0}
        self._queue: queue.Queue[Job | None] = queue.Queue(backlog)
        self._thread = threading.Thread(target=self._run, name="soak-checker")
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job (waits while the backlog is full)."""
        self._queue.put(job)

    def stop(self) -> None:
        """Check what is queued, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._check(job)
            except Exception as exc:  # a bug of the check itself: reported, the soak goes on
                self.fail(job.what, f"the check failed: {type(exc).__name__}: {exc}")
            finally:
                if job.operation is not None:
                    self.classifiers.close(job.operation)

    def _check(self, job: Job) -> None:
        self.counts["jobs_checked"] += 1
        if not job.parts:
            return
        if job.kind == RAW:
            wrong = [p for p, values in job.parts if not np.array_equal(values, self.source.read(p))]
            self._count(job, wrong, "differs from the raw data")
            return
        if not job.candidates:
            why = "is labelled with a classifier that was not current while it was read"
            self._count(job, [p for p, _ in job.parts], why)
            return
        first_wrong: list[Roi] = []
        for number, snapshot in enumerate(job.candidates):
            wrong = self._mismatches(job, snapshot)
            if not wrong:
                self._count(job, [], "")
                return
            first_wrong = first_wrong or wrong
            if number == 0:
                detail = self._explain(job, wrong[0])
        self._count(job, first_wrong, detail)

    def _mismatches(self, job: Job, snapshot: PipelineSnapshot) -> list[Roi]:
        grid, computed, wrong = snapshot.grid(job.block_shape), {}, []
        for part, values in job.parts:
            block = next(iter(grid.blocks_in(part)))
            if block.roi not in computed:
                computed[block.roi] = expected_block(self.source, snapshot, job.kind, block)
            if not np.array_equal(values, computed[block.roi][part.relative_to(block.roi)]):
                wrong.append(part)
        return wrong

    def _explain(self, job: Job, part: Roi) -> str:
        """How the first wrong part differs, and whether another kept classifier computed it."""
        values = next(v for p, v in job.parts if p == part)
        expected = self._part(job.candidates[0], job, part)
        diff = np.abs(values.astype(np.float64) - expected)
        text = (f"{part} under classifier {job.candidates[0].fingerprint}: {np.count_nonzero(diff)} of "
                f"{diff.size} values differ, at most by {diff.max():.4g}")
        for other in self.classifiers.between(0):
            if other.fingerprint != job.candidates[0].fingerprint and np.array_equal(values,
                                                                                    self._part(other, job, part)):
                return text + f"; it is classifier {other.fingerprint}'s result"
        return text

    def _part(self, snapshot: PipelineSnapshot, job: Job, part: Roi) -> np.ndarray:
        block = next(iter(snapshot.grid(job.block_shape).blocks_in(part)))
        return expected_block(self.source, snapshot, job.kind, block)[part.relative_to(block.roi)]

    def _count(self, job: Job, wrong: list[Roi], why: str) -> None:
        self.counts["blocks_checked"] += len(job.parts)
        if wrong:
            self.counts["wrong_blocks"] += len(wrong)
            self.fail(job.what, f"{len(wrong)} of {len(job.parts)} delivered blocks wrong: {why}")


def window_medians(series: list[tuple[float, float]], after: float) -> tuple[float, float] | None:
    """Medians of ``(time, value)`` samples in the first and the last tenth (at least 3 samples each) of the
    samples taken at ``after`` or later; None with fewer than 6 such samples."""
    values = [v for t, v in series if t >= after]
    if len(values) < 6:
        return None
    width = max(3, len(values) // 10)
    return statistics.median(values[:width]), statistics.median(values[-width:])


def quarter_peaks(series: list[tuple[float, float]], after: float) -> tuple[float, float] | None:
    """The most of ``(time, value)`` samples in the first and in the last quarter (at least 3 samples each) of
    the samples taken at ``after`` or later (transient threads and files show up in both); None with fewer
    than 6 such samples."""
    values = [v for t, v in series if t >= after]
    if len(values) < 6:
        return None
    width = max(3, len(values) // 4)
    return max(values[:width]), max(values[-width:])


def growth(series: list[tuple[float, float]], after: float, before: float = float("inf")) -> float | None:
    """Relative growth (0.05 = 5 %) over the samples from ``after`` to ``before`` along their least-squares line
    (robust to the ups and downs of trainings and exports); None with fewer than 6 samples."""
    points = [(t, v) for t, v in series if after <= t < before]
    if len(points) < 6:
        return None
    times, values = np.array(points, float).T
    slope, intercept = np.polyfit(times, values, 1)
    first = slope * times[0] + intercept
    return None if first <= 0 else slope * (times[-1] - times[0]) / first


MAX_GROWTH = 0.05  # resident memory after the warm-up
FD_SLACK, THREAD_SLACK = 8, 4  # open files and threads may end this much above their level after the warm-up
LIFE_SETTLE_S = 30.0  # a restarted process ramps up (kernels, pipelines) this long; the tree is not compared then


def evaluate(soak: Soak, settled: dict, figures: dict) -> tuple[list[dict], dict, list[dict]]:
    """The checks (table rows), the figures and the samples of a finished soak."""
    warmup = min(300.0, figures["minutes"] * 60 / 6)
    samples = soak.samples
    series = {key: [(s["t_s"], s[key]) for s in samples] for key in samples[0]}
    lives = worker_lives(soak.kills, warmup)
    ramps = [(k["at_s"], k["at_s"] + k["recovered_s"] + LIFE_SETTLE_S) for k in soak.kills]
    for key in ("rss_mb", "rss_workers_mb"):
        series[f"steady_{key}"] = [(t, v) for t, v in series[key] if not any(a <= t < b for a, b in ramps)]
    in_life = [g for start, end in lives if (g := growth(series["steady_rss_workers_mb"], start, end)) is not None]
    counts = {**soak.counts, **soak.checker.counts}
    rows: list[dict] = []

    def check(name: str, value, limit, ok: bool) -> None:
        rows.append({"check": name, "value": value, "limit": limit, "ok": bool(ok)})

    def percent(value: float | None) -> float | None:
        return None if value is None else round(100 * value, 1)

    check("wrong blocks", counts["wrong_blocks"], 0, counts["wrong_blocks"] == 0)
    check("blocks checked", counts["blocks_checked"], "> 0", counts["blocks_checked"] > 0)
    failures = soak.failures.items
    kinds = sorted({"hang", "request", "training"} | {f["what"].split()[0] for f in failures})
    for what in kinds:
        found = sum(1 for f in failures if f["what"].split()[0] == what)
        check(f"{what} failures", found, 0, found == 0)
    check("kills recovered (new block computed)", len(soak.kills), "every kill", all(k["back"] for k in soak.kills))
    limit = f"< {100 * MAX_GROWTH:.0f}"
    for name, key in (("process tree", "steady_rss_mb"), ("app process", "rss_app_mb")):
        value = growth(series[key], warmup)
        check(f"RSS growth after warm-up %, {name}", percent(value), limit, value is not None and value < MAX_GROWTH)
    worst = max(in_life, default=None)
    check("RSS growth within a worker's life %, worst", percent(worst), limit, worst is None or worst < MAX_GROWTH)
    for key, slack in (("app_fds", FD_SLACK), ("fds", FD_SLACK), ("app_threads", THREAD_SLACK)):
        ends = quarter_peaks(series[key], warmup)
        shown = None if ends is None else f"{ends[0]:g} -> {ends[1]:g}"
        bounded = ends is not None and ends[1] <= ends[0] + slack
        check(f"{key}, most in first -> last quarter", shown, f"+{slack}", bounded)
    redis = max(s["redis_used_mb"] for s in samples)
    check("redis-server's memory, most (MB)", redis, f"<= {figures['cache_mb']}", redis <= figures["cache_mb"])
    check("leases left after settling", settled["leases"], 0, settled["leases"] == 0)
    check("blocks in progress after settling", settled["in_progress"], 0, settled["in_progress"] == 0)
    keys = ("rss_mb", "rss_app_mb", "rss_redis_mb", "rss_workers_mb", "redis_keys", "redis_used_mb", "threads")
    figures = {**figures, "warmup_s": warmup, "counts": counts, "kills": soak.kills,
               "worker_lives": [[round(s, 1), None if e == float("inf") else round(e, 1)] for s, e in lives],
               "worker_life_growth_pct": [percent(g) for g in in_life], "settled": settled,
               "rss_growth_pct": {k: percent(growth(series[k], warmup)) for k in keys[:4]},
               "first_last_window_medians": {k: window_medians(series[k], warmup) for k in keys},
               "max": {k: max(s[k] for s in samples) for k in (*keys, "classifiers_kept", "leases", "in_progress")},
               "training_s": _spread(soak.trainings_s), "failures": failures[:50],
               "failures_total": len(failures)}
    return rows, figures, samples


def worker_lives(kills: list[dict], warmup: float) -> list[tuple[float, float]]:
    """Spans of the run in which the local worker process was not restarted (after the warm-up, and
    :data:`LIFE_SETTLE_S` after each restart)."""
    starts, ends = [warmup], []
    for kill in (k for k in kills if k["killed"] == "worker"):
        ends.append(kill["at_s"])
        starts.append(max(warmup, kill["at_s"] + kill["recovered_s"] + LIFE_SETTLE_S))
    return [(s, e) for s, e in zip(starts, [*ends, float("inf")]) if s < e]


def _spread(values: list[float]) -> dict:
    if not values:
        return {}
    return {"count": len(values), "median": float(np.median(values)), "max": max(values)}
