"""Soak: live retraining, viewer and web reads, exports and killed workers on the demo project for N minutes.

    python bench/soak.py [--minutes 30] [--workers 2] [--retrain-s 5] [--kill-every-s S] [--export-every-s S]
                         [--json FILE] [--dir bench/out]

Drives the app's own objects without Qt (started in one place, `bench/soak_app.py`): the services (embedded
redis-server, ZeroMQ executor, the supervised local worker with ``--workers`` compute processes), the demo
project opened as a document, the Training tab's controller (a stroke and a training every ``--retrain-s``,
the oldest of our strokes erased so the labels stay bounded), the slice views' requests (whole planes of the
three views in their tile blocks, with prefetch; one in five cancelled at once), the web service over the
same gateway (zarr chunks and npy regions), an export every ``--export-every-s`` and a SIGKILL of a compute
process or of the worker itself, in turn, every ``--kill-every-s``, after which a new block must be computed.

Every block delivered is recomputed here with ``Pipeline.run`` under the classifier it was keyed with (the
snapshot current when the request was made; for the web, the ETag's classifier; for an export, its snapshot)
and must be equal bit for bit: the workers run the same code. Every ``--sample-s`` the resident memory, open
files and threads of the process tree (this process, redis-server, workers and compute processes) and the
cache's keys are sampled. Exit 1 when a check fails: a wrong block, a request unanswered within ``--hang-s``,
a failed request or training, no new block after a kill, resident memory growing by 5 % or more after the
first 5 minutes (the first sixth of a shorter run), open files or threads growing, or leases or blocks in
progress left once the run has settled. Prints JSON and a table; ``--json FILE`` also keeps the samples.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable

import numpy as np
import psutil
from numcodecs import Blosc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backend.compute.geometry import Roi  # noqa: E402
from backend.errors import UserError  # noqa: E402
from backend.io.writers import output_axes  # noqa: E402
from backend.service.export import ExportOptions, run_export  # noqa: E402
from backend.service.gateway import PREFETCH, RAW, SIDE_VIEW, VISIBLE  # noqa: E402
from backend.service.region import RegionRequest  # noqa: E402
from bench.common import report, tree_usage  # noqa: E402
from bench.soak_app import App, running_app  # noqa: E402
from bench.soak_checks import Checker, Classifiers, Failures, Job, evaluate  # noqa: E402
from ilastik_desktop.runtime.demo import write_demo_project  # noqa: E402
from ilastik_desktop.runtime.local_workers import LocalWorkers  # noqa: E402
from tests.integration.workers import compute_processes  # noqa: E402
from viewer.slicing import plane_roi, prefetch_roi, view_block_shape  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
VIEWS = (("z", "y", "x"), ("y", "z", "x"), ("x", "z", "y"))  # normal, rows and columns axes of the three views
WEB_SOURCES = {"probabilities": "Probabilities", "uncertainty": "Uncertainty", "segmentation": "Simple Segmentation"}
KEPT_STROKES = 6  # our strokes on the image at any time; older ones are erased


class Soak:
    """The activities, each on its own thread until :attr:`stop` is set, and what they found."""

    def __init__(self, app: App, a: argparse.Namespace, failures: Failures):
        self.app, self.a, self.failures = app, a, failures
        self.gateway, self.source = app.document.gateway, app.document.source
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(("trainings", "viewer_requests", "cancelled_requests", "web_reads", "exports",
                                     "strokes"), 0)
        self.kills: list[dict] = []
        self.trainings_s: list[float] = []
        self.samples: list[dict] = []
        self.strokes: deque = deque()
        self.random = random.Random(a.seed)
        self.classifiers = Classifiers(lambda: self.gateway.snapshot)
        self.fail = failures.add
        self.checker = Checker(self.source, self.classifiers, self.fail)
        app.controller.pipeline_changed.connect(self.classifiers.note)
        app.controller.trained.connect(self._trained)
        self.started = failures.started = time.monotonic()

    def add(self, name: str, count: int = 1) -> None:
        """Count ``count`` more of ``name``."""
        with self.lock:
            self.counts[name] += count

    def every(self, seconds: float, action: Callable[[int], None], first: float | None = None) -> threading.Thread:
        """A thread calling ``action(n)`` every ``seconds`` (first after ``first``) until stopped."""
        def run() -> None:
            n, wait = 0, seconds if first is None else first
            while not self.stop.wait(wait):
                try:
                    action(n)
                except Exception as exc:  # the activity failed (an answer the app should not give): go on
                    self.fail(action.__name__, f"{type(exc).__name__}: {exc}")
                n, wait = n + 1, seconds

        thread = threading.Thread(target=run, name=f"soak-{action.__name__}")
        thread.start()
        return thread

    # -- live training ----------------------------------------------------------------------------------------
    def retrain(self, n: int) -> None:
        """A stroke of class 1 or 2 (in turn) at a random place, the oldest of ours erased, and a training."""
        _, depth, height, width = self.source.spatial_shape
        z, row, col = self.random.randrange(depth), self.random.randrange(height - 24), self.random.randrange(width)
        stroke = ((0, z, 0, 0), [(row + i, col) for i in range(0, 24, 2)])
        self.app.gui.post(self._paint_and_train, stroke, 1 + n % 2)

    def _paint_and_train(self, stroke, label: int) -> None:
        controller = self.app.controller
        if len(self.strokes) >= KEPT_STROKES:
            position, points = self.strokes.popleft()
            controller.stroke(position, "y", "x", points, 2, 0)
        position, points = stroke
        controller.stroke(position, "y", "x", points, 2, label)
        self.strokes.append(stroke)
        self.add("strokes")
        controller.train()

    def _trained(self, message: str) -> None:
        if message.startswith("trained"):
            self.add("trainings")
            self.trainings_s.append(float(message.rsplit(" in ", 1)[1].split()[0]))
        else:
            self.fail("training", message)

    # -- the slice views ----------------------------------------------------------------------------------------
    def view(self, n: int) -> None:
        """Raw and probabilities of a whole plane of a random view, then the prefetch ahead of it."""
        normal, rows, cols = VIEWS[n % 3]
        shape = self.source.spatial_shape
        position = tuple(self.random.randrange(s) for s in shape)
        sizes = dict(zip("tzyx", shape))
        roi = plane_roi(position, rows, cols, (0, sizes[rows], 0, sizes[cols]))
        blocks = view_block_shape(normal)
        priority = VISIBLE if normal == "z" else SIDE_VIEW
        cancel = self.random.random() < 0.2
        for kind in (RAW, "Probabilities"):
            self.request(kind, roi, priority, blocks, cancel and kind != RAW)
        ahead = prefetch_roi(roi, normal, self.random.choice((-1, 1)), shape)
        if ahead is not None and not cancel:
            self.request("Probabilities", ahead, PREFETCH, blocks, False)

    def request(self, kind: str, roi: Roi, priority: int, blocks: tuple[int, int, int, int], cancel: bool,
                what: str = "viewer") -> None:
        """One gateway request as the viewer makes it; its delivered blocks are checked (also when cancelled)
        under the classifier that was current when it was made (any that was during the call: all blocks must
        be of one of them)."""
        operation, generation = self.classifiers.open()
        parts: list = []
        try:
            req = self.gateway.request(kind, roi, priority, lambda part, values: parts.append((part, values.copy())),
                                       blocks)
            candidates = self.classifiers.between(generation, self.classifiers.note())
            self.add("viewer_requests")
            if cancel:
                req.cancel()
                self.add("cancelled_requests")
            else:
                self._wait(req, f"{what} {kind} {roi}")
        except BaseException:
            self.classifiers.close(operation)
            raise
        self.checker.submit(Job(what, kind, candidates, blocks, list(parts), operation))

    def _wait(self, req: RegionRequest, what: str) -> None:
        try:
            req.result(self.a.hang_s)
        except TimeoutError:
            self.fail("hang", f"{what}: no answer within {self.a.hang_s:.0f} s")
            req.cancel()
        except Exception as exc:
            self.fail("request", f"{what} failed: {type(exc).__name__}: {exc}")

    # -- the web service ----------------------------------------------------------------------------------------
    def web(self, n: int) -> None:
        """A zarr chunk of a random source, or (every third read) a random npy region of probabilities."""
        operation, generation = self.classifiers.open()
        try:
            if n % 3 == 2:
                kind, roi, values, etag = self._web_region()
            else:
                kind, roi, values, etag = self._web_chunk()
        except BaseException:
            self.classifiers.close(operation)
            raise
        self.add("web_reads")
        data, _, classifier = etag.strip('"').rpartition("-")
        if data != self.gateway.data_fingerprint:
            self.fail("web", f"ETag {etag} names other data than {self.gateway.data_fingerprint}")
        candidates = [s for s in self.classifiers.between(generation) if s.fingerprint == classifier][:1]
        grid = candidates[0].grid(self.gateway.config.block_shape) if candidates else None
        parts = [] if grid is None else [(b.roi.intersect(roi), values[b.roi.intersect(roi).relative_to(roi)])
                                         for b in grid.blocks_in(roi)]
        parts = parts or [(roi, values)]
        self.checker.submit(Job(f"web {kind}", kind, candidates, self.gateway.config.block_shape, parts, operation))

    def _get(self, path: str) -> tuple[bytes, str]:
        server = self.app.server
        headers = {"Authorization": f"Bearer {server.token}"} if server.token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(server.url + path, headers=headers),
                                        timeout=self.a.hang_s) as response:
                return response.read(), response.headers["ETag"]
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"GET {path}: {exc.code} {exc.read()[:300]!r}") from None

    def _web_chunk(self) -> tuple[str, Roi, np.ndarray, str]:
        source = self.random.choice(sorted(WEB_SOURCES))
        shape = self.source.spatial_shape
        block = tuple(min(b, s) for b, s in zip(self.gateway.config.block_shape, shape))  # as the .zarray says
        counts = [-(-s // b) for s, b in zip(shape, block)]
        index = [self.random.randrange(c) for c in counts]
        start = [i * b for i, b in zip(index, block)]
        roi = Roi(tuple(start), tuple(min(a + b, s) for a, b, s in zip(start, block, shape)))
        body, etag = self._get(f"/zarr/0/{source}/0/0.{'.'.join(map(str, index[1:]))}")  # c, z, y, x (demo: t = 1)
        kind = WEB_SOURCES[source]
        dtype, channels = self.gateway.pipeline.dtype(kind), self.gateway.pipeline.channels(kind)
        chunk = np.frombuffer(Blosc().decode(body), dtype).reshape((channels, *block[1:]))
        values = np.moveaxis(chunk, 0, -1)[tuple(slice(0, s) for s in roi.shape[1:])][None]
        return kind, roi, values, etag

    def _web_region(self) -> tuple[str, Roi, np.ndarray, str]:
        shape = self.source.spatial_shape
        size = (1, self.random.randint(1, 8), self.random.randint(1, 96), self.random.randint(1, 96))
        start = tuple(self.random.randrange(s - min(k, s) + 1) for s, k in zip(shape, size))
        roi = Roi(start, tuple(a + min(k, s) for a, k, s in zip(start, size, shape)))
        query = f"start={','.join(map(str, start[1:]))}&stop={','.join(map(str, roi.stop[1:]))}"
        body, etag = self._get(f"/api/v1/lanes/0/probabilities?{query}&format=npy")
        return "Probabilities", roi, np.load(io.BytesIO(body))[None], etag

    # -- exports ---------------------------------------------------------------------------------------------
    def export(self, n: int) -> None:
        """Export the probabilities of the whole image through the gateway and check every block of the file."""
        operation, generation = self.classifiers.open()
        seen: list[int] = []
        pattern = os.path.join(self.a.folder, f"soak-export-{n}")
        try:
            options = ExportOptions(fmt="npy", filename_pattern=pattern, progress=False)
            result = run_export(self.gateway, "demo", options,
                                on_progress=lambda done, total: seen or seen.append(self.classifiers.note()))
            values = to_tzyxc(np.load(result.path), output_axes(self.source.axes))
            os.remove(result.path)
        except BaseException:
            self.classifiers.close(operation)
            raise
        self.add("exports")
        block, whole = self.gateway.config.block_shape, Roi.from_shape(self.source.spatial_shape)
        candidates = self.classifiers.between(generation, seen[0] if seen else None)
        parts = [(b.roi, values[b.roi.relative_to(whole)]) for b in candidates[0].grid(block).blocks_in(whole)]
        self.checker.submit(Job("export", "Probabilities", candidates, block, parts, operation))

    # -- killed workers ---------------------------------------------------------------------------------------
    def kill(self, n: int) -> None:
        """SIGKILL a compute process (even turns) or the local worker itself (odd turns); then a new block must
        be computed: a plane of uncertainty nobody asked for yet, requested once the worker is back."""
        local = self.app.services.local
        worker = psutil.Process(local.process.pid)
        computing = compute_processes(worker)
        target = computing[0] if computing and n % 2 == 0 else worker
        what = "worker" if target is worker else "compute process"
        killed = time.monotonic()
        target.kill()
        deadline = killed + self.a.hang_s
        back = False
        while time.monotonic() < deadline and not back:  # also after the end of the run: each kill is followed up
            time.sleep(0.1)
            back = self._back(local, target)
        z = n % self.source.spatial_shape[1]
        roi = plane_roi((0, z, 0, 0), "y", "x", (0, self.source.spatial_shape[2], 0, self.source.spatial_shape[3]))
        self.request("Uncertainty", roi, VISIBLE, view_block_shape("z"), False, what="after a kill")
        self.kills.append({"at_s": round(killed - self.started, 1), "killed": what, "pid": target.pid,
                           "back": back, "recovered_s": round(time.monotonic() - killed, 2)})

    def _back(self, local: LocalWorkers, killed: psutil.Process) -> bool:
        """True once the killed process is replaced and the worker computes with all its processes again."""
        try:
            computing = compute_processes(psutil.Process(local.process.pid))
        except psutil.Error:
            return False
        replaced = local.process.pid != killed.pid and killed.pid not in {p.pid for p in computing}
        return replaced and len(computing) >= self.a.workers and \
            self.app.services.executor.status().processes >= self.a.workers

    # -- samples ------------------------------------------------------------------------------------------------
    def sample(self, n: int) -> None:
        """Take a sample and keep it."""
        self.samples.append(self.measure())

    def measure(self) -> dict:
        """Resident memory, open files and threads of the process tree, the cache's keys and what is in flight."""
        client = self.app.services.cache.client
        row = {"t_s": round(time.monotonic() - self.started, 1), **tree_usage(psutil.Process()),
               "redis_keys": client.dbsize(), "leases": sum(1 for _ in client.scan_iter("*:lease", count=1000)),
               "redis_used_mb": round(client.info("memory")["used_memory"] / 2**20, 1),
               "in_progress": len(self.gateway.table), "queued": self.app.services.executor.status().queued,
               "classifiers_kept": self.classifiers.kept()}
        return row

    def settle(self, timeout: float = 60.0) -> dict:
        """Wait until no block is in progress and no lease is held (or ``timeout``); the last sample."""
        deadline = time.monotonic() + timeout
        while True:
            row = self.measure()
            if (row["in_progress"] == 0 and row["leases"] == 0) or time.monotonic() > deadline:
                return row
            time.sleep(0.5)


def to_tzyxc(values: np.ndarray, axes: str) -> np.ndarray:
    """An exported array of ``axes`` as ``(t, z, y, x, c)``."""
    for axis in "tzyxc":
        if axis not in axes:
            values, axes = values[..., None], axes + axis
    return values.transpose([axes.index(a) for a in "tzyxc"])


def run(a: argparse.Namespace) -> tuple[list[dict], dict, dict]:
    """The soak; the checks as table rows, the figures, and the samples."""
    project = os.path.join(a.folder, "demo.ilp")
    if not os.path.exists(project):
        project = write_demo_project(a.folder)
    duration = a.minutes * 60
    failures = Failures()
    with running_app(project, a.workers, a.cache_mb, a.chunk_memory_mb, failures.add) as app:
        soak = Soak(app, a, failures)
        kill_every = a.kill_every_s or min(180.0, max(duration / 3, 2.0))
        export_every = a.export_every_s or min(300.0, max(duration / 2, 2.0))
        threads: list[threading.Thread] = []
        try:
            for seconds, action, first in ((a.sample_s, soak.sample, 0), (a.retrain_s, soak.retrain, 0),
                                           (a.viewer_s, soak.view, None), (a.web_s, soak.web, None),
                                           (export_every, soak.export, export_every / 2),
                                           (kill_every, soak.kill, None)):
                threads.append(soak.every(seconds, action, first))
            soak.stop.wait(duration)
        finally:  # also on Ctrl-C: every activity ends, and what was delivered is checked
            soak.stop.set()
            for thread in threads:
                thread.join()
            app.controller.close()  # a training still running ends; its pipeline is set on the GUI thread
            app.gui.stop()
            soak.checker.stop()
        settled = soak.settle()
    figures = {"minutes": a.minutes, "workers": a.workers, "retrain_s": a.retrain_s, "kill_every_s": kill_every,
               "export_every_s": export_every, "cache_mb": a.cache_mb, "hang_s": a.hang_s,
               "qt_loaded": any(m.startswith("PyQt") for m in sys.modules)}
    return evaluate(soak, settled, figures)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    ap.add_argument("--workers", type=int, default=2, help="compute processes of the local worker (default 2)")
    ap.add_argument("--retrain-s", type=float, default=5.0, help="a stroke and a training this often (default 5)")
    ap.add_argument("--viewer-s", type=float, default=1.0, help="a view's plane this often (default 1)")
    ap.add_argument("--web-s", type=float, default=2.0, help="a web read this often (default 2)")
    ap.add_argument("--export-every-s", type=float, default=None, help="default: 300, or half a shorter run")
    ap.add_argument("--kill-every-s", type=float, default=None, help="default: 180, or a third of a shorter run")
    ap.add_argument("--sample-s", type=float, default=5.0, help="sample the process tree this often (default 5)")
    ap.add_argument("--hang-s", type=float, default=120.0, help="a request unanswered this long hangs (default 120)")
    ap.add_argument("--cache-mb", type=int, default=32, help="the embedded cache's memory (default 32: it fills)")
    ap.add_argument("--chunk-memory-mb", type=float, default=16.0, help="the web service's chunk memory (default 16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=os.path.join(HERE, "out"))
    ap.add_argument("--json", default=None, help="also write the results and the samples to this file")
    a = ap.parse_args()
    a.folder = os.path.join(a.dir, "soak")
    numbers = {"--minutes": a.minutes, "--retrain-s": a.retrain_s, "--viewer-s": a.viewer_s, "--web-s": a.web_s,
               "--export-every-s": a.export_every_s or 1, "--kill-every-s": a.kill_every_s or 1,
               "--sample-s": a.sample_s, "--hang-s": a.hang_s, "--cache-mb": a.cache_mb,
               "--chunk-memory-mb": a.chunk_memory_mb, "--workers": a.workers}
    try:
        for name, value in numbers.items():
            if not 0 < value < float("inf"):
                raise UserError(f"{name} {value}: expected a positive number")
        rows, figures, series = run(a)
    except UserError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak: interrupted (everything it started was stopped)", file=sys.stderr)
        return 130
    report("soak", rows, figures, a.json, {"samples": series})
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
