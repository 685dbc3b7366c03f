"""The one configuration tree: every timing and limit of the application, with documented defaults.

Like ``dask.config``, each value can be overridden by an environment variable named after its place in
the tree: ``ILASTIK_DESKTOP__EXECUTOR__HEARTBEAT_S=2`` sets ``executor.heartbeat_s``. Child processes
(local workers, compute processes) inherit the environment, so they see the same values. Unknown
variables and values out of range are refused with a message naming the variable. Modules receive
their section (``config.cache``, ``config.executor``...) and never read a module constant for a timing;
``ilastik-desktop --show-config`` prints the tree as it applies.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from backend.errors import UserError

ENV_PREFIX = "ILASTIK_DESKTOP__"


def setting(default: float, doc: str, low: float = 0.0, high: float = 1e9):
    """A configuration field: its default, what it does, and the range a value must lie in."""
    return field(default=default, metadata={"doc": doc, "low": low, "high": high})


@dataclass(frozen=True)
class CacheConfig:
    """The Redis block cache: claims, errors and riding out outages."""

    lease_s: float = setting(10.0, "a claimed block's lease; its owner renews it every third of this while it "
                                   "computes, and others take the block over once it lapses", 0.5, 3600)
    error_ttl_s: float = setting(60.0, "how long a failed block's error is kept, so others do not recompute it",
                                 1, 86400)
    retry_window_s: float = setting(20.0, "how long calls to a cache server that does not answer are retried",
                                    0, 3600)
    retry_first_delay_s: float = setting(0.1, "first pause between retries (doubling)", 0.001, 60)
    retry_max_delay_s: float = setting(2.0, "longest pause between retries", 0.001, 600)
    socket_timeout_s: float = setting(10.0, "a Redis call without an answer for this long fails (and is retried)",
                                      0.1, 600)
    subscribe_timeout_s: float = setting(10.0, "a gateway waits this long for the completion channel at start",
                                         0.1, 600)
    server_start_timeout_s: float = setting(10.0, "the embedded redis-server must answer within this", 0.5, 600)
    renew_share: float = setting(0.3, "the renewal of a gateway's leases (one call for all) is given up after this "
                                      "share of a lease, retries included, and tried again a third of a lease "
                                      "later: it never outlasts the leases", 0.05, 0.9)
    block_deadline_s: float = setting(1800.0, "a block not delivered within this of being asked for fails its "
                                              "waiters (its owner may renew its lease but never deliver)", 1, 1e7)
    claim_batch: int = setting(256, "blocks a gateway looks up and claims in one call to the cache server", 1,
                               100000)
    batch_mb: float = setting(16.0, "a gateway reads, or writes, cached blocks in one round trip up to about "
                                    "this many MB of values", 0.01, 4096)
    written_ttl_s: float = setting(120.0, "how long a --shared-filesystem export's 'written' marker of a block is "
                                          "kept (the chunk files are the record: a block whose marker lapsed is "
                                          "found on disk, not recomputed); longer than the shared file system "
                                          "takes to show one machine's new file to the others", 1, 1e7)


@dataclass(frozen=True)
class ExecutorConfig:
    """The gateway's side of the ZeroMQ workers (Paranoid Pirate heartbeating) and of Dask."""

    heartbeat_s: float = setting(1.0, "heartbeat interval towards the workers", 0.01, 60)
    liveness: int = setting(3, "a worker silent for this many heartbeats (of the slower side) is dropped and "
                               "its tasks go to the others", 1, 100)
    max_attempts: int = setting(3, "a task that fails or overruns this often on different workers fails", 1, 100)
    deadline_floor_s: float = setting(30.0, "a task is re-dispatched after 10 x the recent median plus this",
                                      0.1, 86400)
    worker_timeout_s: float = setting(60.0, "wait this long for the first workers; a headless run with no worker "
                                            "for this long fails (--worker-timeout)", 1, 86400)
    rate_window_s: float = setting(10.0, "a worker's blocks per second are counted over this window", 0.1, 3600)
    dask_status_s: float = setting(1.0, "how often the Dask scheduler is asked for its workers", 0.05, 600)
    dask_gather_batch: int = setting(32, "at most this many Dask results are fetched from the workers in one "
                                         "round trip (the others wait on their workers)", 1, 10_000)
    h5_writer_timeout_s: float = setting(120.0, "--shared-filesystem with hdf5: a compute process waits this long "
                                                "for the writer process to confirm a block, the gateway as long for "
                                                "it to start and to finish the file", 1, 86400)
    dask_connect_timeout_s: float = setting(10.0, "a Dask scheduler (--dask tcp://...) must have answered like one "
                                                  "within this", 0.1, 600)


@dataclass(frozen=True)
class WorkerConfig:
    """A ZeroMQ worker process (``ilastik-worker``) and its compute processes."""

    heartbeat_s: float = setting(1.0, "the worker's heartbeat interval (--heartbeat)", 0.01, 60)
    liveness: int = setting(3, "the worker reconnects after this many silent heartbeats of its gateway", 1, 100)
    reconnect_first_s: float = setting(0.5, "first pause before reconnecting (doubling)", 0.01, 60)
    reconnect_max_s: float = setting(8.0, "longest pause before reconnecting", 0.01, 3600)
    warm_up_limit_s: float = setting(60.0, "compute processes must have compiled their kernels within this", 1,
                                     3600)
    stop_grace_s: float = setting(2.0, "at stop, running tasks get this long before their processes are killed",
                                  0, 600)
    parent_poll_s: float = setting(0.5, "how often a child process checks that its parent is still alive",
                                   0.01, 60)
    max_processes_per_core: int = setting(4, "local processes (--workers, --processes, --dask local:N) are "
                                             "limited to this many per usable core", 1, 64)
    process_memory_mb: float = setting(256.0, "memory counted for each process: local processes are limited to "
                                              "the machine's memory over this, a batch job's to its memory over "
                                              "this", 16, 1e6)
    task_deadline_s: float = setting(600.0, "a compute process busy with one task for longer than this is killed "
                                            "and replaced, the task failed as transient (the gateway's deadline "
                                            "for the task, sent with it, applies instead when there is one)",
                                     0.5, 86400)
    compute_silence_s: float = setting(30.0, "a compute process that has not run for this long (stopped, frozen) is "
                                              "killed and replaced", 1, 86400)
    deadline_check_s: float = setting(0.5, "how often the compute processes are checked for these two", 0.01, 60)
    pipelines_kept: int = setting(4, "pipelines a worker and each of its compute processes keep (live training "
                                     "makes one per retrain); the least recently used beyond are dropped, and "
                                     "the gateway sends one again when a task needs it", 2, 1000)
    feature_memo_mb: float = setting(64.0, "each compute process keeps the features of the blocks it computed "
                                           "last, up to this many MB (0: none), so that a tile recomputed under a "
                                           "new classifier (live training) runs only the forest; a 128 x 128 tile "
                                           "of 17 feature columns takes 1.06 MB, and a 256 x 512 x 512 image's "
                                           "three views show 32 tiles and prefetch 32; blocks over a sixteenth of "
                                           "this (an export's) are not kept", 0, 1e5)


@dataclass(frozen=True)
class LocalWorkersConfig:
    """The application's own worker process, restarted when it dies."""

    restart_first_s: float = setting(0.5, "first pause before restarting a dead local worker (doubling)", 0.01, 60)
    restart_max_s: float = setting(8.0, "longest pause before a restart", 0.01, 3600)
    max_restarts: int = setting(5, "restarts allowed within restart_window_s before giving up", 0, 1000)
    restart_window_s: float = setting(60.0, "the window max_restarts counts over", 1, 86400)
    silence_s: float = setting(10.0, "a local worker the app has not heard from for this long (stopped, frozen, "
                                     "hung) is killed and restarted", 1, 3600)


@dataclass(frozen=True)
class TrainingConfig:
    """Live training in the window."""

    debounce_s: float = setting(0.1, "a stroke starts training once no other stroke followed for this long",
                                0, 60)
    chunk_trees: int = setting(10, "a forest grows this many trees at a time; between them, a training that new "
                                   "strokes made outdated stops (the trees are the same as grown at once)", 1, 1000)
    features_timeout_s: float = setting(600.0, "a labelled block's features not back by then fail the training",
                                        1, 86400)
    undo_steps: int = setting(100, "strokes that can be undone (each keeps a copy of the 40^3 label blocks it "
                                   "touched; older ones are forgotten)", 1, 100000)
    journal_sync_s: float = setting(0.5, "painted labels are appended to the project's journal at once and synced "
                                         "to disk (fsync, by a background thread) at most this often", 0, 60)


@dataclass(frozen=True)
class WindowConfig:
    """The window's own pace."""

    status_poll_s: float = setting(0.5, "the status bar and workers panel are refreshed this often", 0.05, 60)
    threshold_pause_s: float = setting(0.6, "typed thresholds apply once typing pauses this long", 0, 60)
    refresh_delay_s: float = setting(0.015, "view changes arriving within this are requested together", 0, 1)
    screenshot_settle_s: float = setting(0.7, "--screenshot waits this long after the last overlay", 0, 60)
    batch_stop_s: float = setting(5.0, "a cancelled batch (the window closing) gets this long to stop and remove "
                                  "its partial output before the window stops waiting for it", 0, 600)
    problem_message_s: float = setting(10.0, "why a layer cannot be shown stays this long in the status bar", 0.5,
                                       3600)


@dataclass(frozen=True)
class WebConfig:
    """The web service's limits (``ilastik-desktop serve`` and File > Serve over HTTP)."""

    header_timeout_s: float = setting(10.0, "a connection must send a whole request head within this, and an idle "
                                            "kept-alive connection is closed after it", 0.1, 3600)
    max_connections: int = setting(256, "open connections at most; beyond, the oldest one not in a request is "
                                        "dropped, or the new one refused when all are busy", 4, 100000)
    memory_budget_mb: float = setting(1024.0, "answers being assembled hold at most this much memory together "
                                              "(MB); requests beyond wait for room", 1, 1e6)
    budget_wait_s: float = setting(30.0, "a request waits this long for room in the memory budget, then gets "
                                         "503 with Retry-After", 0, 3600)
    stop_grace_s: float = setting(2.0, "at stop, requests in progress get this long before they are cancelled",
                                  0, 600)
    shard_blocks: int = setting(2, "a sharded zarr v3 array's shard holds this many blocks along each spatial "
                                   "axis (fewer where the image has fewer); a shard is computed and kept whole",
                                1, 64)
    viewer_poll_s: float = setting(1.0, "an open /viewer page asks this often whether the classifier or the "
                                        "thresholds changed (then it shows the new results)", 0.1, 3600)


@dataclass(frozen=True)
class ObjectsConfig:
    """Labelling objects of a frame block by block (``--prediction_maps``, the Objects layer)."""

    threads: int = setting(2, "threads labelling the blocks of a frame; each holds about one block of input "
                              "(64 x 256 x 256 voxels, one 2048 x 2048 slice in 2D) and its temporaries", 1, 256)
    stop_s: float = setting(10.0, "a closing gateway waits this long for its frames' labellings to end (their "
                                  "reads fail at once; a read in progress finishes first)", 0, 600)


@dataclass(frozen=True)
class Config:
    """Every tunable of the application, by section."""

    cache: CacheConfig = CacheConfig()
    executor: ExecutorConfig = ExecutorConfig()
    worker: WorkerConfig = WorkerConfig()
    local_workers: LocalWorkersConfig = LocalWorkersConfig()
    training: TrainingConfig = TrainingConfig()
    window: WindowConfig = WindowConfig()
    web: WebConfig = WebConfig()
    objects: ObjectsConfig = ObjectsConfig()

    def replace(self, **changes: float) -> Config:
        """A copy with ``section__name=value`` changes (checked like environment values)."""
        return _apply(self, {tuple(key.split("__")): value for key, value in changes.items()}, "Config.replace")


@dataclass(frozen=True)
class Entry:
    """One value of the tree as ``--show-config`` and the docs list it."""

    key: str
    value: float
    default: float
    variable: str
    doc: str


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    """The defaults with the environment's ``ILASTIK_DESKTOP__SECTION__NAME`` overrides (UserError if bad)."""
    environ = os.environ if environ is None else environ
    changes = {}
    for variable, text in environ.items():
        if variable.startswith(ENV_PREFIX):
            changes[tuple(variable[len(ENV_PREFIX):].lower().split("__"))] = text
    return _apply(Config(), changes, "environment")


def entries(config: Config) -> list[Entry]:
    """Every value of ``config`` with its default, environment variable and description, in tree order."""
    rows = []
    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        for item in dataclasses.fields(values):
            rows.append(Entry(f"{section.name}.{item.name}", getattr(values, item.name), item.default,
                              variable_name(section.name, item.name), item.metadata["doc"]))
    return rows


def variable_name(section: str, name: str) -> str:
    """The environment variable that overrides ``section.name``."""
    return f"{ENV_PREFIX}{section.upper()}__{name.upper()}"


def environment(config: Config) -> dict[str, str]:
    """``config`` as environment variables: given to a child process, its :func:`load_config` sees the same."""
    return {entry.variable: repr(entry.value) for entry in entries(config)}


def format_config(config: Config) -> str:
    """The tree as text: one line per value (``section.name = value``), changed values marked."""
    lines = []
    for entry in entries(config):
        changed = "" if entry.value == entry.default else f"   (default {entry.default:g})"
        lines.append(f"{entry.key} = {entry.value:g}{changed}\n    {entry.doc}; {entry.variable}")
    return "\n".join(lines)


def _apply(config: Config, changes: dict[tuple[str, ...], object], origin: str) -> Config:
    sections = {f.name: f for f in dataclasses.fields(config)}
    updated: dict[str, dict[str, float]] = {}
    for path, raw in changes.items():
        if len(path) != 2 or path[0] not in sections:
            raise UserError(f"{origin}: unknown setting {_name(path)} (sections: {', '.join(sections)}; "
                            "ilastik-desktop --show-config lists them)")
        section = getattr(config, path[0])
        known = {f.name: f for f in dataclasses.fields(section)}
        if path[1] not in known:
            raise UserError(f"{origin}: unknown setting {_name(path)} (in {path[0]}: {', '.join(known)})")
        updated.setdefault(path[0], {})[path[1]] = _checked(known[path[1]], raw, _name(path), origin)
    return dataclasses.replace(config, **{name: dataclasses.replace(getattr(config, name), **values)
                                          for name, values in updated.items()})


def _name(path: tuple[str, ...]) -> str:
    return variable_name(path[0], path[1]) if len(path) == 2 else ENV_PREFIX + "__".join(path).upper()


def _checked(item: dataclasses.Field, raw: object, name: str, origin: str) -> float:
    low, high = item.metadata["low"], item.metadata["high"]
    whole = isinstance(item.default, int)
    try:
        value = int(str(raw).strip()) if whole else float(str(raw).strip())
    except ValueError:
        value = math.nan
    if not (low <= value <= high):  # also refuses nan
        kind = "a whole number" if whole else "a number"
        raise UserError(f"{origin}: {name}={str(raw)[:40]!r}: expected {kind} from {low:g} to {high:g}")
    return value
